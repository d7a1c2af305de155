"""One exactness domain under auto (issue 18, point 5): a layer's result must not change beyond
float32 accumulation order when M crosses a boundary where auto switches kernels on the H100
(skinny kernel / triton_sm90 / mixed-input kernel / decode_cublas). Each case runs the first M rows
of one quantized activation once at M = boundary and once at M = boundary + 1, on auto, with
float32 output, and compares the common rows. The exactness domain of each kernel:
docs/backend-selection.md#exactness-domains."""

import pytest
import torch

import dq_kernels as dq
from dq_kernels import backends, formats

pytestmark = pytest.mark.gpu

N, K = 1024, 3072
# (format, op, the last M before auto changes kernel on 9.0)
BOUNDARIES = [
    ("mxfp8", "mxfp8_mm", backends.sm90_skinny_best_max_m("mxfp8_mm", N, K)),
    ("mxfp8", "mxfp8_mm", backends.SM90_SKINNY_MAX_M),
    ("mxfp8", "mxfp8_mm", backends.SM90_MXFP8_DECODE_CUBLAS_MIN_M - 1),
    ("nvfp4", "nvfp4_mm", backends.SM90_SKINNY_MAX_M),
    ("nvfp4", "nvfp4_weight_only_mm", backends.sm90_skinny_best_max_m("nvfp4_weight_only_mm", N, K)),
    ("nvfp4", "nvfp4_weight_only_mm", backends.SM90_SKINNY_MAX_M),
]


def first_rows(fmt: formats.Format, q: torch.Tensor, s: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first m rows of canonical operands (q, s), the scales re-laid in the swizzled layout."""
    k = q.shape[1] * fmt.elements_per_byte
    return q[:m].contiguous(), formats.to_blocked(formats.from_blocked(s, q.shape[0], k // fmt.block_size)[:m])


@pytest.mark.parametrize("fmt_name, op, boundary", BOUNDARIES)
def test_auto_result_does_not_change_across_a_kernel_boundary(fmt_name, op, boundary):
    torch.manual_seed(boundary)
    x = torch.randn(boundary + 1, K, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16) / K**0.5
    fmt = formats.FORMATS[fmt_name]
    chosen = [backends.select(op, x.device, m, N, K).spec.name for m in (boundary, boundary + 1)]
    if fmt_name == "mxfp8":
        a, b = dq.quantize_mxfp8(x), dq.quantize_mxfp8(w)
        run = lambda m: dq.mxfp8_mm(*first_rows(fmt, *a, m), *b, out_dtype=torch.float32)  # noqa: E731
    elif op == "nvfp4_mm":
        a, b = dq.quantize_nvfp4(x), dq.quantize_nvfp4(w)
        run = lambda m: dq.nvfp4_mm(*first_rows(fmt, *a[:2], m), a[2], *b, out_dtype=torch.float32)  # noqa: E731
    else:
        b = dq.quantize_nvfp4(w)
        run = lambda m: dq.nvfp4_weight_only_mm(x[:m].float().to(torch.bfloat16), *b).float()  # noqa: E731
    below, above = run(boundary), run(boundary + 1)[:boundary]
    error = ((below - above).norm() / below.norm()).item()
    print(f"{op} M = {boundary} ({chosen[0]}) vs {boundary + 1} ({chosen[1]}): relative difference {error:.2e}")
    # fp32 accumulation order only (bf16 output for W4A16: one rounding apart at most)
    assert error < (4e-3 if op == "nvfp4_weight_only_mm" else 1e-5)
