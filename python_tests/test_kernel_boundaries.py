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


def test_an_mxfp8_weight_outside_the_domain_gives_one_result_at_every_m():
    """A weight with nonzero blocks under a scale byte below 3 (MXFP8Weight.from_float routes it to
    the reference): its first output row, tiny column included, agrees element by element at M on
    both sides of every MXFP8 boundary (float32 summation order: 1e-5 of the sum of |products|, and
    one bfloat16 rounding of the output)."""
    torch.manual_seed(0)
    w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16) / K**0.5
    w[3] = torch.linspace(-1e-35, 1e-35, K)  # row 3's blocks all under scale byte 3: output column 3 is tiny
    with pytest.warns(UserWarning, match="runs on backend 'reference' at every M"):
        weight = dq.MXFP8Weight.from_float(w)
    x = torch.randn(backends.SM90_MXFP8_DECODE_CUBLAS_MIN_M + 1, K, device="cuda", dtype=torch.bfloat16)
    first = torch.nn.functional.linear(x[:1], weight, None).float()
    x0 = formats.quantize_dequantize_mxfp8(x[:1]).float()
    bound = 1e-5 * (x0.abs() @ weight.dequantize(torch.float32).abs().t()) + first.abs() * 2**-8
    assert first[0, 3] != 0 and bound[0, 3] < 1e-30 < first.abs().median()
    for m in sorted({b + d for _, op, b in BOUNDARIES if op == "mxfp8_mm" for d in (0, 1)}):
        row = torch.nn.functional.linear(x[:m], weight, None)[:1].float()
        assert ((row - first).abs() <= bound).all(), m
