"""decode_cublas's MXFP8 Linear as one native call (the cast, the weight decode and cuBLASLt:
``native.decoded_mxfp8_linear``) against the same three steps launched from Python (the native
cast's decode, the native weight decode, ``torch.addmm`` with cuBLAS's bf16 reductions in float32),
at the FLUX shapes of M >= 512 with a bf16 bias: GPU time (``bench.timing``, cold L2, median) and
the host time of one launch (median over rounds of 50 calls behind a GPU spin), plus bf16 cuBLAS
``F.linear`` for scale. Checks the two results agree up to float32 summation order. Needs a CUDA
GPU, the native library and cuBLASLt.

    python benchmarks/decoded_linear.py [--json PATH]
"""

import argparse
import json
import statistics
import time

import torch

from dq_kernels import formats, native
from dq_kernels.backends import decode_cublas, get_backend
from dq_kernels.bench import shapes, timing


def host_us(fn, calls: int = 50, rounds: int = 7) -> float:
    """Median launch-side wall time of ``fn()`` in us, the GPU kept busy so launches never wait."""
    per_call = []
    for _ in range(rounds):
        torch.cuda._sleep(200_000_000)  # ~100 ms of GPU spin: the queue never drains during the round
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        per_call.append((time.perf_counter() - start) / calls * 1e6)
        torch.cuda.synchronize()
    return statistics.median(per_call)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    backend = get_backend("decode_cublas")
    rows = []
    for shape in (s for s in shapes.FLUX if s.M >= 512):
        m, n, k = shape.M, shape.N, shape.K
        g = torch.Generator(device="cuda").manual_seed(m + n + k)
        x = torch.randn(m, k, device="cuda", generator=g).to(torch.bfloat16)
        w = torch.randn(n, k, device="cuda", generator=g)
        b_q, b_s = formats.quantize_mxfp8(w)
        bias = torch.randn(n, device="cuda", generator=g).to(torch.bfloat16)
        w16 = w.to(torch.bfloat16)

        def one_call():
            return backend.mxfp8_linear(x, b_q, b_s, bias, "rceil")

        def steps():
            a = torch.empty(m, k, dtype=torch.bfloat16, device="cuda")
            native.quantize_dequantize_mxfp8(x, "rceil", a, checked=False)
            return backend.mxfp8_mm_decoded(a, b_q, b_s, bias, torch.bfloat16)

        def bf16():
            return torch.nn.functional.linear(x, w16, bias)

        a, b = one_call(), steps()
        scale = b.float().abs().max().item()
        torch.testing.assert_close(a.float(), b.float(), rtol=2**-7, atol=1e-5 * scale)
        row = {"M": m, "N": n, "K": k, "label": shape.label}
        for name, fn in (("one_call", one_call), ("steps", steps), ("bf16", bf16)):
            fn()
            row[f"{name}_gpu_us"] = round(timing.median_us(fn), 1)
            row[f"{name}_host_us"] = round(host_us(fn), 1)
        row["one_call_vs_steps_gpu"] = round(row["steps_gpu_us"] / row["one_call_gpu_us"], 3)
        row["one_call_x_bf16_gpu"] = round(row["bf16_gpu_us"] / row["one_call_gpu_us"], 3)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "timing": timing.METHOD, "rows": rows,
                       "gemm_workspace_bytes": decode_cublas._ONE_CALL_GEMM_WORKSPACE}, f, indent=1)


if __name__ == "__main__":
    main()
