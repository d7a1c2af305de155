"""Every sm_90a GEMM entry point of the native library once, at a small and a large shape, for
compute-sanitizer (issue 18: memcheck and racecheck clean on one small and one large shape per
kernel). Each call's result is checked against the reference backend on the same quantized
operands, so a run without the sanitizer is a quick smoke test too. Needs an sm_90 GPU and the
native library.

    compute-sanitizer --tool memcheck python benchmarks/sanitize.py
    compute-sanitizer --tool racecheck python benchmarks/sanitize.py --small
"""

import argparse

import torch

from dq_kernels import formats, native
from dq_kernels.backends import get_backend

CUDA = torch.device("cuda")
# (M, K, N): odd M and N, K not a multiple of the kernels' K steps, then a FLUX-sized shape; the
# Linear's M picks its kernel (quantizing skinny, cast + skinny, cast + mixed-input).
SMALL = [(1, 160, 136), (7, 160, 136), (77, 160, 136)]
LARGE = [(1, 3072, 3072), (16, 3072, 3072), (1024, 3072, 3072)]


def _close(name: str, out: torch.Tensor, want: torch.Tensor) -> None:
    err = ((out.double() - want.double()).norm() / want.double().norm().clamp_min(1e-30)).item()
    if err > 1e-2:
        raise AssertionError(f"{name}: relative error {err:.2e} against the reference")
    print(f"  {name}: ok (rel err {err:.1e})")


def run_shape(m: int, k: int, n: int) -> None:
    print(f"{m}x{k}x{n}")
    g = torch.Generator(device=CUDA).manual_seed(m + k + n)
    x = torch.randn(m, k, device=CUDA, generator=g).to(torch.bfloat16)
    w = torch.randn(n, k, device=CUDA, generator=g) * 0.1
    bias = torch.randn(n, device=CUDA, generator=g).to(torch.bfloat16)
    ref = get_backend("reference")
    kernel = "mixed" if m > native.SM90_SKINNY_MAX_M else "skinny"

    b_q, b_s = formats.quantize_mxfp8(w)
    a_q, a_s = formats.quantize_mxfp8(x)
    want = ref.mxfp8_mm(a_q, a_s, b_q, b_s, bias.float(), torch.bfloat16)
    out = torch.empty(m, n, dtype=torch.bfloat16, device=CUDA)
    for kind in ([kernel, "quantizing_skinny"] if m == 1 else [kernel]):
        native.sm90_mxfp8_linear(x, b_q, b_s, bias, out, "rceil", kind)
        _close(f"mxfp8 linear ({kind})", out, want)
    if kernel == "skinny":
        native.sm90_mxfp8_skinny_mm(a_q, a_s, b_q, b_s, bias.float(), out)
    else:
        native.sm90_mxfp8_mixed_mm(formats.quantize_dequantize_mxfp8(x), b_q, b_s, bias.float(), out)
    _close(f"mxfp8 {kernel} mm", out, want)

    b_q, b_s, b_ts = formats.quantize_nvfp4(w)
    b_ts = b_ts.reshape(())
    a_q, a_s, a_ts = formats.quantize_nvfp4(x)
    want = ref.nvfp4_mm(a_q, a_s, a_ts, b_q, b_s, b_ts, bias.float(), torch.bfloat16)
    for kind in ([kernel, "quantizing_skinny"] if m == 1 else [kernel]):
        native.sm90_nvfp4_linear(x, b_q, b_s, b_ts, None, bias, out, kind)
        _close(f"nvfp4 linear ({kind})", out, want)
    if kernel == "skinny":
        native.sm90_nvfp4_skinny_mm(a_q, a_s, a_ts.reshape(()), b_q, b_s, b_ts, bias.float(), out)
        _close("nvfp4 skinny mm", out, want)
        native.sm90_nvfp4_w4a16_skinny_mm(x, b_q, b_s, b_ts, bias.float(), out)
    else:
        values, a_ts = formats.quantize_dequantize_nvfp4(x)
        native.sm90_nvfp4_mixed_mm(values, b_q, b_s, a_ts.reshape(()), b_ts, bias.float(), out)
        _close("nvfp4 mixed mm", out, want)
        native.sm90_nvfp4_mixed_mm(x, b_q, b_s, None, b_ts, bias.float(), out)
    _close(f"nvfp4 w4a16 {kernel} mm", out, ref.nvfp4_weight_only_mm(x, b_q, b_s, b_ts, bias.float()))
    torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="the small shapes only (racecheck is slow)")
    args = parser.parse_args()
    for shape in SMALL + ([] if args.small else LARGE):
        run_shape(*shape)
    print("all entry points ran")


if __name__ == "__main__":
    main()
