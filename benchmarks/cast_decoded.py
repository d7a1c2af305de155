"""The casts a quantized Linear runs before the Hopper mixed-input GEMM, which `dq-kernels bench
quant` does not time: the activation rounded to the format and written decoded (MXFP8 as bf16, NVFP4
as f16 without its tensor scale), Triton (``triton_cast``) against the native CUDA casts
(``cutlass``, csrc/cast.cu). Timed like `bench quant` (cold L2, median); bandwidth on the bytes each
must move (the bf16 input read, twice for the dynamic NVFP4 case, and its outputs written). Checks each output
against dq_kernels.formats once, bit for bit (NaN-free random input). Needs a CUDA GPU and the
native library.

    python benchmarks/cast_decoded.py [--json PATH]
"""

import argparse
import json

import torch

from dq_kernels import formats
from dq_kernels.backends import get_backend
from dq_kernels.bench import quant, timing


def cases(x: torch.Tensor, ts: torch.Tensor):
    """(name, backend, call, bytes written per element, reads of x, reference) per case."""
    triton, cutlass = get_backend("triton_cast"), get_backend("cutlass")
    mxfp8_bf16 = formats.quantize_dequantize_mxfp8(x, "rceil")
    nvfp4_f16 = {t is None: formats.quantize_dequantize_nvfp4(x, t)[0] for t in (None, ts)}
    for name, b in (("triton_cast", triton), ("cutlass", cutlass)):
        yield "mxfp8_bf16", name, lambda b=b: b.quantize_dequantize_mxfp8(x, "rceil"), 2, 1, mxfp8_bf16
        yield "nvfp4_f16", name, lambda b=b: b.quantize_dequantize_nvfp4(x, None)[0], 2, 2, nvfp4_f16[True]
        yield "nvfp4_f16_static", name, lambda b=b: b.quantize_dequantize_nvfp4(x, ts)[0], 2, 1, nvfp4_f16[False]


def same(out: torch.Tensor, ref: torch.Tensor) -> bool:
    return torch.equal(out.view(torch.uint8), ref.view(torch.uint8))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="write the rows as JSON")
    args = parser.parse_args()
    rows = []
    print(f"{'M':>6} {'K':>6} {'case':<17} {'backend':<12} {'us':>8} {'TB/s':>6}  bit-identical")
    for m, k in quant.DEFAULT_SHAPES:
        x = torch.randn(m, k, generator=torch.Generator("cuda").manual_seed(0), device="cuda", dtype=torch.bfloat16)
        ts = formats.nvfp4_tensor_scale(x)
        for case, backend, call, out_bytes, reads, ref in cases(x, ts):
            identical = same(call(), ref)
            us = timing.median_us(call)
            tbps = (reads * 2 + out_bytes) * m * k / us / 1e6
            rows.append({"case": case, "backend": backend, "M": m, "K": k, "us": us, "tbps": tbps, "bit_identical": identical})
            print(f"{m:>6} {k:>6} {case:<17} {backend:<12} {us:>8.1f} {tbps:>6.2f}  {identical}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
