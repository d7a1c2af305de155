"""Triton cast kernels (backend ``triton_cast``): bit-identical to the reference quantize.

Without a GPU the same kernels run under ``TRITON_INTERPRET=1`` (set by conftest.py); with a GPU the
compiled kernels run on awkward inputs.
"""

import pytest
import torch

import dq_kernels as dq
from dq_kernels import formats
from dq_kernels.backends import select, triton_cast

pytest.importorskip("triton")

from test_formats import awkward  # noqa: E402

DTYPES = (torch.bfloat16, torch.float16, torch.float32)
E4M3_NAN_BYTES = (0x7F, 0xFF)


def assert_same_mxfp8(q, s, q_ref, s_ref):
    assert torch.equal(s, s_ref)
    qb, rb = q.view(torch.uint8), q_ref.view(torch.uint8)
    nan, nan_ref = (qb & 0x7F) == 0x7F, (rb & 0x7F) == 0x7F
    assert torch.equal(nan, nan_ref)  # NaN elements may differ only in the sign of their NaN byte
    assert torch.equal(qb[~nan], rb[~nan])


def assert_same_nvfp4(out, ref):
    q, s, t = out
    q_ref, s_ref, t_ref = ref
    assert torch.equal(s.view(torch.uint8), s_ref.view(torch.uint8))
    assert torch.equal(t, t_ref) or (torch.isnan(t) and torch.isnan(t_ref))
    # element codes inside a NaN-scaled block are unspecified (formats.py): compare the others
    nan_rows = formats.from_blocked(s, q.shape[0], q.shape[1] * 2 // 16).view(torch.uint8) & 0x7F == 0x7F
    keep = ~nan_rows.repeat_interleave(8, dim=1)
    assert torch.equal(q[keep], q_ref[keep])


# ---------------------------------------------------------------------------------------------- interpreter


interpreter_only = pytest.mark.skipif(
    torch.cuda.is_available(), reason="the interpreter variant runs in CPU CI; on a GPU the compiled kernels are tested"
)


def finite_tensor_scale(x: torch.Tensor) -> torch.Tensor:
    """Keep amax / 2688 finite for float32 inputs (awkward() holds float32's largest value)."""
    return x.clamp(-1e30, 1e30) if x.dtype == torch.float32 else x


def interpretable(x: torch.Tensor) -> torch.Tensor:
    # Triton 3.9's interpreter converts bf16 subnormals wrongly; the GPU tests cover them.
    if x.dtype == torch.bfloat16:
        x = torch.where(x.abs() < torch.finfo(torch.bfloat16).tiny, torch.zeros_like(x), x)
    return x


@interpreter_only
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,k", [(1, 32), (77, 160), (129, 256)])
def test_interpreted_mxfp8_matches_reference(dtype, m, k):
    x = interpretable(awkward(m, k, dtype, seed=m + k))
    for scaling in ("rceil", "floor"):
        assert_same_mxfp8(*triton_cast.quantize_mxfp8(x, scaling), *formats.quantize_mxfp8(x, scaling))


@interpreter_only
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,k", [(1, 32), (77, 160), (129, 256)])
def test_interpreted_nvfp4_matches_reference(dtype, m, k):
    x = finite_tensor_scale(interpretable(awkward(m, k, dtype, seed=m * k)))
    for ts in (None, torch.tensor(0.37)):
        assert_same_nvfp4(triton_cast.quantize_nvfp4(x, ts), formats.quantize_nvfp4(x, ts))


@interpreter_only
def test_interpreted_row_stride_and_special_values():
    wide = torch.randn(40, 192, dtype=torch.bfloat16)
    x = wide[:, 32:160]  # row stride 192 > K = 128
    x[3, 5] = float("nan")
    x[7, 40] = float("inf")
    for scaling in ("rceil", "floor"):
        assert_same_mxfp8(*triton_cast.quantize_mxfp8(x, scaling), *formats.quantize_mxfp8(x, scaling))
    assert_same_nvfp4(triton_cast.quantize_nvfp4(x, torch.tensor(0.5)), formats.quantize_nvfp4(x, torch.tensor(0.5)))
    assert_same_nvfp4(triton_cast.quantize_nvfp4(x, None), formats.quantize_nvfp4(x, None))


def assert_same_values(out, ref, interpreted=False):
    """Bit-identical values, NaN where the reference has NaN. Under the interpreter, whose bf16
    conversion of subnormals is wrong (see interpretable), the reference's subnormals are skipped."""
    assert out.dtype == ref.dtype and out.shape == ref.shape
    keep = torch.ones_like(ref, dtype=torch.bool)
    if interpreted:
        keep = ~((ref != 0) & (ref.abs() < torch.finfo(ref.dtype).tiny))
    torch.testing.assert_close(out[keep], ref[keep], rtol=0, atol=0, equal_nan=True)


def check_quantize_dequantize(x, interpreted=False):
    """quantize_dequantize_* against the reference quantize followed by the reference decode."""
    for scaling in ("rceil", "floor"):
        ref = formats.dequantize_mxfp8(*formats.quantize_mxfp8(x, scaling), torch.bfloat16)
        assert_same_values(triton_cast.quantize_dequantize_mxfp8(x, scaling), ref, interpreted)
    for ts in (None, torch.tensor(0.37, device=x.device)):
        q, s, t = formats.quantize_nvfp4(x, ts)
        values, t_out = triton_cast.quantize_dequantize_nvfp4(x, ts)
        assert torch.equal(t_out, t)
        one = torch.ones((), device=x.device)
        assert_same_values(values, formats.dequantize_nvfp4(q, s, one, torch.float16), interpreted)


@interpreter_only
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,k", [(1, 32), (77, 160)])
def test_interpreted_quantize_dequantize_matches_reference(dtype, m, k):
    check_quantize_dequantize(finite_tensor_scale(interpretable(awkward(m, k, dtype, seed=m + 2 * k))), interpreted=True)


# ---------------------------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,k", [(1, 32), (77, 160), (300, 96), (4096, 3072)])
def test_quantize_dequantize_bit_identical_on_gpu(dtype, m, k):
    check_quantize_dequantize(finite_tensor_scale(awkward(m, k, dtype, seed=m + 2 * k)).cuda())




@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,k", [(1, 32), (77, 160), (129, 4160), (300, 96), (4096, 3072)])
def test_mxfp8_bit_identical_on_gpu(dtype, m, k):
    x = awkward(m, k, dtype, seed=m + k).cuda()
    for scaling in ("rceil", "floor"):
        assert_same_mxfp8(*triton_cast.quantize_mxfp8(x, scaling), *formats.quantize_mxfp8(x, scaling))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,k", [(1, 32), (77, 160), (129, 4160), (300, 96), (4096, 3072)])
def test_nvfp4_bit_identical_on_gpu(dtype, m, k):
    x = finite_tensor_scale(awkward(m, k, dtype, seed=m * k)).cuda()
    for ts in (None, torch.tensor(0.37, device="cuda")):
        assert_same_nvfp4(triton_cast.quantize_nvfp4(x, ts), formats.quantize_nvfp4(x, ts))


@pytest.mark.gpu
def test_special_values_strides_and_batch_dims_on_gpu():
    wide = torch.randn(2, 60, 192, dtype=torch.bfloat16, device="cuda")
    x = wide[..., 32:160]  # leading batch dim, row stride 192 > K = 128
    x[0, 3, 5] = float("nan")
    x[1, 7, 40] = float("inf")
    x[1, 9, 64:96] = 0.0
    for scaling in ("rceil", "floor"):
        assert_same_mxfp8(*dq.quantize_mxfp8(x, scaling), *formats.quantize_mxfp8(x, scaling))
    ts = torch.tensor(0.5, device="cuda")
    assert_same_nvfp4(dq.quantize_nvfp4(x, ts), formats.quantize_nvfp4(x, ts))
    assert_same_nvfp4(dq.quantize_nvfp4(x), formats.quantize_nvfp4(x))


@pytest.mark.gpu
def test_auto_uses_the_cast_kernels_on_gpu():
    """auto's cast: the native library's CUDA cast where it runs here, else triton_cast."""
    device = torch.device("cuda")
    native_cast = dq.get_backend("cutlass").availability_on(device)[0]
    for op in ("quantize_mxfp8", "quantize_nvfp4"):
        assert select(op, device, 128, 256, 256).spec.name == ("cutlass" if native_cast else "triton_cast")


@pytest.mark.gpu
def test_cast_kernels_capture_in_a_cuda_graph():
    x = torch.randn(256, 512, dtype=torch.bfloat16, device="cuda")
    dq.quantize_mxfp8(x)
    dq.quantize_nvfp4(x)  # compile before capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        q, s = dq.quantize_mxfp8(x)
        q4, s4, t4 = dq.quantize_nvfp4(x)
    x.copy_(torch.randn_like(x))
    graph.replay()
    assert_same_mxfp8(q, s, *formats.quantize_mxfp8(x))
    assert_same_nvfp4((q4, s4, t4), formats.quantize_nvfp4(x))


@pytest.mark.gpu
def test_fast_launch_reuses_the_compiled_kernel_per_specialization():
    """Repeated casts launch the kept compiled kernel (FastLaunch), bit-identical to the first
    launch's; an input of another alignment gets its own specialization, still bit-identical."""
    mxfp8_kernel = triton_cast._kernels()[0]
    x = torch.randn(300, 256, device="cuda", dtype=torch.bfloat16)
    first = dq.quantize_mxfp8(x, backend="triton_cast")
    kept = len(mxfp8_kernel.compiled)
    assert kept >= 1
    for _ in range(3):
        assert_same_mxfp8(*dq.quantize_mxfp8(x, backend="triton_cast"), *first)
    assert len(mxfp8_kernel.compiled) == kept
    shifted = torch.empty(300 * 256 + 1, device="cuda", dtype=torch.bfloat16)[1:].view(300, 256)  # 2-byte aligned
    shifted.copy_(x)
    for _ in range(2):
        assert_same_mxfp8(*dq.quantize_mxfp8(shifted, backend="triton_cast"), *first)
    assert len(mxfp8_kernel.compiled) == kept + 1
    for _ in range(2):  # the dynamic NVFP4 cast: amax and cast kernels
        assert_same_nvfp4(dq.quantize_nvfp4(x, backend="triton_cast"), formats.quantize_nvfp4(x))
