"""The sm_90a mixed-input kernel's plans at the M of text streams and small batches (128-512), where
it trails bf16 cuBLAS most (docs/hopper-mixed-input.md): for each shape and format, GPU time
(``bench.timing``, cold L2, median) of ``native.sm90_*_mixed_mm`` on the decoded activation with
each token tile (64, 128, 256) with and without shared tiles (split along K or stream-K, as the
plan picks), the kernel's own choice marked, beside bf16 cuBLAS. Each result is checked against
the kernel's own choice (float32 summation order only). Needs an sm_90a GPU and the native library.

    python benchmarks/mixed_plans.py [--m 128 256 512] [--json PATH]
"""

import argparse
import json
import sys

import torch

from dq_kernels import formats, native
from dq_kernels.bench import gemm, report, shapes, timing

KN = [(3072, 3072), (3072, 12288), (12288, 3072)]  # (K, N) of FLUX's and QwenImage's Linears


def operands(fmt: str, a: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, tuple]:
    """The decoded activation the mixed-input kernel reads and the weight arguments after it:
    MXFP8 (bf16 decode; b_q, b_s), NVFP4 W4A4 (f16 decode without the tensor scale; b_q, b_s, a_ts, b_ts)."""
    if fmt == "mxfp8":
        return formats.quantize_dequantize_mxfp8(a), formats.quantize_mxfp8(w)
    values, a_ts = formats.quantize_dequantize_nvfp4(a)
    b_q, b_s, b_ts = formats.quantize_nvfp4(w)
    return values, (b_q, b_s, a_ts, b_ts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--m", type=int, nargs="+", default=[128, 256, 512], help="activation rows")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    rows = []
    for m in args.m:
        for k, n in KN:
            a, w = gemm.random_operands(shapes.Shape(m, k, n), "cuda")
            row = {"M": m, "K": k, "N": n, "bf16_us": round(timing.median_us(lambda: torch.mm(a, w.t())), 1)}
            for fmt in ("mxfp8", "nvfp4"):
                values, weight = operands(fmt, a, w)
                run = native.sm90_mxfp8_mixed_mm if fmt == "mxfp8" else native.sm90_nvfp4_mixed_mm
                chosen = native.sm90_mixed_plan(m, n, k)
                expected = torch.empty(m, n, dtype=torch.float32, device="cuda")
                run(values, *weight, None, expected)
                for tokens in (64, 128, 256):
                    for share in (True, False):
                        plan = native.sm90_mixed_plan(m, n, k, tokens)
                        if not share and not plan.shared_tiles:
                            continue  # the same launch as with sharing
                        out = torch.empty(m, n, dtype=torch.float32, device="cuda")

                        def call(tokens=tokens, share=share, out=out):
                            run(values, *weight, None, out, tokens, share)

                        call()
                        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
                        name = f"{fmt}_t{tokens}" + ("" if share else "_whole")
                        row[name + "_us"] = round(timing.median_us(call), 1)
                        if share and plan.shared_tiles:
                            row[name + "_plan"] = (f"{plan.shared_tiles} shared tiles on {plan.shared_ctas} CTAs, "
                                                   + (f"{plan.parts} parts" if plan.parts else "stream-K"))
                        if share and plan == chosen:
                            row[fmt + "_chosen"] = name
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        header = report.json_header(torch.cuda.get_device_name(), "python " + " ".join(sys.argv), timing.METHOD)
        report.write_json(args.json, header | {"rows": rows})


if __name__ == "__main__":
    main()
