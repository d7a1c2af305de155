"""The native activation casts (csrc/cast.cu, ``native.quantize_*``, the cutlass backend's cast
methods) against dq_kernels.formats computed on the same CUDA device, bit for bit.

CPU tests: the C entry points' argument checks (fake pointers, nothing launched) and the wrappers'
checks, with a built library. The quantizers' arithmetic itself is checked on the CPU by
test_quantize_cuh.py.
"""

import pytest
import torch

import dq_kernels as dq
from dq_kernels import formats, native
from dq_kernels.backends import get_backend

from test_formats import awkward
from test_triton_cast import assert_same_mxfp8, assert_same_nvfp4, assert_same_values, finite_tensor_scale

DTYPES = (torch.bfloat16, torch.float16, torch.float32)
SHAPES = [(1, 32), (77, 160), (129, 4160), (300, 96), (4096, 3072), (3, 32768), (2, 131072)]


@pytest.fixture(autouse=True)
def fresh_native():
    native._reset()
    yield
    native._reset()


def loaded_library():
    ok, why = native.status()
    if not ok:
        pytest.skip(f"the native library is unavailable: {why}")
    return native._library().lib


# ---------------------------------------------------------------------------------------------- CPU


def test_c_argument_checks():
    """Bad arguments come back as negative codes before anything touches CUDA (fake pointers)."""
    lib = loaded_library()
    p, bf16 = 256, 1
    mx, mx_dec, nv, nv_dec = (lib.dq_quantize_mxfp8, lib.dq_quantize_dequantize_mxfp8, lib.dq_quantize_nvfp4,
                              lib.dq_quantize_dequantize_nvfp4)
    assert mx(None, bf16, 32, 1, 32, 0, p, p, None) == -1
    assert mx(p, bf16, 32, 1, 32, 0, None, p, None) == -1
    assert nv(p, bf16, 16, 1, 16, None, p, p, p, None, None) == -1  # dynamic tensor scale without scratch
    assert nv(p, bf16, 16, 1, 16, p, p, p, None, None, None) == -1  # no tensor_scale_out
    assert mx(p, 7, 32, 1, 32, 0, p, p, None) == -3
    assert mx(p, bf16, 32, 0, 32, 0, p, p, None) == -2
    assert mx(p, bf16, 48, 1, 48, 0, p, p, None) == -2  # K % 32 != 0
    assert nv(p, bf16, 24, 1, 24, p, p, p, p, None, None) == -2  # K % 16 != 0
    assert mx(p, bf16, 16, 1, 32, 0, p, p, None) == -2  # row stride < K
    assert mx(p, bf16, 32, 1, 32, 2, p, p, None) == -6  # scaling
    assert mx(p + 2, bf16, 32, 1, 32, 0, p, p, None) == -4
    assert mx(p, bf16, 36, 2, 32, 0, p, p, None) == -4  # rows of 72 bytes
    assert mx(p, bf16, 32, 1, 32, 0, p + 8, p, None) == -4
    assert mx_dec(p, bf16, 32, 1, 32, 0, p + 8, None) == -4
    assert nv(p, bf16, 16, 1, 16, p, p + 4, p, p, None, None) == -4
    assert nv_dec(p, bf16, 16, 1, 16, p, p + 8, p, None, None) == -4


def test_wrappers_check_their_arguments():
    loaded_library()
    x = torch.zeros(4, 64, dtype=torch.bfloat16)
    q, s = torch.empty(4, 64, dtype=torch.float8_e4m3fn), torch.empty(128, 4, dtype=torch.uint8)
    with pytest.raises(ValueError, match="CUDA tensors"):
        native.quantize_mxfp8(x, "rceil", q, s)
    with pytest.raises(ValueError, match="scaling"):
        native.quantize_mxfp8(x, "ceil", q, s)
    with pytest.raises(ValueError, match="unit column stride"):
        native.quantize_mxfp8(torch.zeros(64, 64, dtype=torch.bfloat16).t(), "rceil", q, s)
    with pytest.raises(ValueError, match="multiple of 16"):
        native.quantize_nvfp4(x[:, :24], None, q, s, torch.empty(()))


def test_the_cast_layout_and_the_cast_input():
    """native.cast_layout_ok is the one check of the layout the casts read; the backends'
    base.cast_input keeps views that have it and copies the others (no library or GPU needed)."""
    from dq_kernels.backends.base import cast_input

    wide = torch.zeros(8, 128, dtype=torch.bfloat16)
    assert native.cast_layout_ok(wide) and native.cast_layout_ok(wide[:, :64])  # row stride 128 >= K = 64
    assert not native.cast_layout_ok(torch.zeros(64, 64, dtype=torch.bfloat16).t())  # column stride 64
    assert not native.cast_layout_ok(torch.zeros(8, 68, dtype=torch.bfloat16)[:, :64])  # 136-byte rows
    assert not native.cast_layout_ok(wide[:, 4:68])  # rows start 8 bytes past 16-byte alignment
    assert cast_input(wide[:, :64]).data_ptr() == wide.data_ptr()  # kept: no copy
    for x in (torch.randn(64, 64, dtype=torch.bfloat16).t(), torch.randn(8, 68, dtype=torch.float16)[:, :64]):
        y = cast_input(x)
        assert native.cast_layout_ok(y) and torch.equal(y, x)
    x = torch.randn(2, 4, 64)
    y = cast_input(x)
    assert y.shape == (8, 64) and y.data_ptr() == x.data_ptr()


# ---------------------------------------------------------------------------------------------- GPU


@pytest.fixture
def cutlass():
    device = torch.device("cuda", torch.cuda.current_device())
    ok, why = native.status()
    if not ok:
        pytest.skip(f"the native library is unavailable: {why}")
    ok, why = native.supports_device(device, native.CAST_FAMILY)
    if not ok:
        pytest.skip(why)
    return get_backend("cutlass")


def special(x: torch.Tensor) -> torch.Tensor:
    """x with a NaN block, an inf in a block, a -inf and a zero block (rows permitting)."""
    x = x.clone()
    m, k = x.shape
    x[5 % m, :32] = float("nan")
    x[6 % m, 40 % k] = float("inf")
    x[7 % m, 3] = -float("inf")
    x[8 % m, -32:] = 0.0
    return x


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,k", SHAPES)
def test_mxfp8_bit_identical(cutlass, dtype, m, k):
    for x in (awkward(m, k, dtype, seed=m + k).cuda(), special(awkward(m, k, dtype, seed=m * k)).cuda()):
        for scaling in ("rceil", "floor"):
            assert_same_mxfp8(*cutlass.quantize_mxfp8(x, scaling), *formats.quantize_mxfp8(x, scaling))
            ref = formats.dequantize_mxfp8(*formats.quantize_mxfp8(x, scaling), torch.bfloat16)
            assert_same_values(cutlass.quantize_dequantize_mxfp8(x, scaling), ref)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,k", SHAPES)
def test_nvfp4_bit_identical(cutlass, dtype, m, k):
    finite = finite_tensor_scale(awkward(m, k, dtype, seed=m * k)).cuda()
    nan, given, one = special(finite), torch.tensor(0.37, device="cuda"), torch.ones((), device="cuda")
    for x, ts in ((finite, None), (finite, given), (nan, given), (nan, None)):
        assert_same_nvfp4(cutlass.quantize_nvfp4(x, ts), formats.quantize_nvfp4(x, ts))
        q, s, t = formats.quantize_nvfp4(x, ts)
        values, t_out = cutlass.quantize_dequantize_nvfp4(x, ts)
        assert torch.equal(t_out, t) or (t_out.isnan() and t.isnan())
        if torch.isfinite(t):  # else the codes, and so the values, are unspecified
            assert_same_values(values, formats.dequantize_nvfp4(q, s, one, torch.float16))


@pytest.mark.gpu
@pytest.mark.parametrize("m,k", [(4096, 3072), (1, 1040 * 1024)])
def test_nvfp4_dynamic_tensor_scale_from_the_amax_partials(cutlass, m, k):
    """The amax pass's partial maxima (one per CTA, reduced by each CTA of the cast) give formats'
    tensor scale wherever the largest |x| lies, with many CTAs per column of x (4096 x 3072) and with
    fewer CTAs than columns of 1024 elements (K = 1040 * 1024: more than the pass's 1024 CTAs); an
    all-zero x gives 0 and a NaN gives NaN whatever an earlier call left in the scratch."""
    x = torch.rand(m, k, device="cuda").to(torch.bfloat16)  # |x| < 1
    for row, col, value in ((m - 1, k - 1, 7.0), (0, 0, -9.0), (m // 2, k // 2 + 5, 300.0)):
        x[row, col] = value
        assert_same_nvfp4(cutlass.quantize_nvfp4(x, None), formats.quantize_nvfp4(x))
    zero = torch.zeros_like(x)
    assert_same_nvfp4(cutlass.quantize_nvfp4(zero, None), formats.quantize_nvfp4(zero))
    assert cutlass.quantize_nvfp4(zero, None)[2].item() == 0.0
    x[m - 1, 3] = float("nan")
    assert torch.isnan(cutlass.quantize_nvfp4(x, None)[2])


@pytest.mark.gpu
def test_strides_batch_dims_and_ops(cutlass):
    wide = torch.randn(2, 60, 192, dtype=torch.bfloat16, device="cuda")
    x = wide[..., 32:160]  # a leading batch dim, row stride 192 > K = 128
    x[0, 3, 5] = float("nan")
    x[1, 9, 64:96] = 0.0
    for scaling in ("rceil", "floor"):
        assert_same_mxfp8(*dq.quantize_mxfp8(x, scaling, backend="cutlass"), *formats.quantize_mxfp8(x, scaling))
    ts = torch.tensor(0.5, device="cuda")
    assert_same_nvfp4(dq.quantize_nvfp4(x, ts, backend="cutlass"), formats.quantize_nvfp4(x, ts))
    finite = wide[..., 32:160].nan_to_num()
    assert_same_nvfp4(dq.quantize_nvfp4(finite, backend="cutlass"), formats.quantize_nvfp4(finite))
    offset_16 = torch.randn(4 * 64 + 8, dtype=torch.bfloat16, device="cuda")[8:].view(4, 64)  # read in place
    offset_2 = torch.randn(4 * 64 + 1, dtype=torch.float16, device="cuda")[1:].view(4, 64)  # copied first
    for y in (offset_16, offset_2):
        assert_same_mxfp8(*cutlass.quantize_mxfp8(y, "rceil"), *formats.quantize_mxfp8(y, "rceil"))


@pytest.mark.gpu
def test_casts_in_a_cuda_graph(cutlass):
    """The dynamic NVFP4 cast (the amax pass, the cast) and the MXFP8 casts captured in
    one graph and replayed on new data."""
    x = torch.randn(300, 4160, dtype=torch.bfloat16, device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        cutlass.quantize_nvfp4(x, None)  # warm up outside the capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            nvfp4 = cutlass.quantize_nvfp4(x, None)
            mxfp8 = cutlass.quantize_mxfp8(x, "rceil")
    torch.cuda.current_stream().wait_stream(stream)
    for scale in (1.0, 1e-3, 300.0):
        x.copy_(torch.randn_like(x) * scale)
        graph.replay()
        torch.cuda.synchronize()
        assert_same_nvfp4(nvfp4, formats.quantize_nvfp4(x))
        assert_same_mxfp8(*mxfp8, *formats.quantize_mxfp8(x, "rceil"))
