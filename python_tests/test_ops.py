"""Custom ops: opcheck, fullgraph compile, mm numerics on odd shapes, and every argument error."""

import pytest
import torch

import dq_kernels as dq
from dq_kernels import formats


def mxfp8_operands(m, n, k, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(m, k, generator=g).to(device)
    b = torch.randn(n, k, generator=g).to(device)
    return dq.quantize_mxfp8(a) + dq.quantize_mxfp8(b)


def nvfp4_operands(m, n, k, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(m, k, generator=g).to(device)
    b = torch.randn(n, k, generator=g).to(device)
    return dq.quantize_nvfp4(a) + dq.quantize_nvfp4(b)


def fp64_product(a, b):
    return a.double() @ b.double().t()


def rel_err(out, ref):
    return ((out.double() - ref).norm() / ref.norm()).item()


# ---------------------------------------------------------------------------------------------- opcheck


ALL_CHECKS = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
# torch's schema checker compares inputs before and after with allclose, which float8 lacks
# ("mul_cpu_reduced_float" not implemented for Float8_e4m3fn); ops with float8 inputs get the
# same two guarantees (no input mutated, no output aliasing an input) from check_schema below.
FLOAT8_INPUT_CHECKS = ALL_CHECKS[1:]


def check_schema(op, args):
    """Outputs share no storage with inputs; inputs are unchanged byte for byte."""
    inputs = [a for a in args if isinstance(a, torch.Tensor)]
    before = [t.clone() for t in inputs]
    outputs = op(*args)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    for t, b in zip(inputs, before):
        assert torch.equal(t.view(torch.uint8) if t.element_size() == 1 else t, b.view(torch.uint8) if b.element_size() == 1 else b)
        for o in outputs:
            assert o.untyped_storage().data_ptr() != t.untyped_storage().data_ptr()


def opcheck(op, args, float8_inputs):
    torch.library.opcheck(op, args, test_utils=FLOAT8_INPUT_CHECKS if float8_inputs else ALL_CHECKS)
    check_schema(op, args)


def test_opcheck_quantize_ops():
    x = torch.randn(77, 160, dtype=torch.bfloat16)
    opcheck(torch.ops.dq_kernels.quantize_mxfp8.default, (x, "rceil", None), float8_inputs=False)
    opcheck(torch.ops.dq_kernels.quantize_nvfp4.default, (x, None, None), float8_inputs=False)
    opcheck(torch.ops.dq_kernels.quantize_nvfp4.default, (x, torch.tensor(0.01), None), float8_inputs=False)


def test_opcheck_dequantize_ops():
    q, s = dq.quantize_mxfp8(torch.randn(77, 160))
    opcheck(torch.ops.dq_kernels.dequantize_mxfp8.default, (q, s, torch.bfloat16), float8_inputs=True)
    q, s, t = dq.quantize_nvfp4(torch.randn(77, 160))
    opcheck(torch.ops.dq_kernels.dequantize_nvfp4.default, (q, s, t, torch.float16), float8_inputs=True)


@pytest.mark.parametrize("with_bias", [False, True])
def test_opcheck_mm_ops(with_bias):
    bias = torch.randn(40) if with_bias else None
    a_q, a_s, b_q, b_s = mxfp8_operands(33, 40, 96)
    opcheck(torch.ops.dq_kernels.mxfp8_mm.default, (a_q, a_s, b_q, b_s, bias, torch.bfloat16, None), float8_inputs=True)
    a_q, a_s, a_t, b_q, b_s, b_t = nvfp4_operands(33, 40, 96)
    opcheck(
        torch.ops.dq_kernels.nvfp4_mm.default,
        (a_q, a_s, a_t, b_q, b_s, b_t, bias, torch.float32, None),
        float8_inputs=True,
    )


@pytest.mark.parametrize("with_bias", [False, True])
def test_opcheck_linear_ops(with_bias):
    bias = torch.randn(40) if with_bias else None
    x = torch.randn(33, 96, dtype=torch.bfloat16)
    _, _, b_q, b_s = mxfp8_operands(33, 40, 96)
    opcheck(torch.ops.dq_kernels.mxfp8_linear.default, (x, b_q, b_s, bias, "rceil", None, None), float8_inputs=True)
    _, _, _, b_q, b_s, b_t = nvfp4_operands(33, 40, 96)
    for activation_scale in (None, torch.tensor(0.01)):
        args = (x, b_q, b_s, b_t, activation_scale, bias, None, None)
        opcheck(torch.ops.dq_kernels.nvfp4_linear.default, args, float8_inputs=True)


def test_linear_ops_are_cast_then_mm():
    """The linear ops give what the cast op and the mm op give in sequence (bit for bit), in x's
    dtype, and name their arguments in errors."""
    x = torch.randn(33, 96, dtype=torch.bfloat16)
    bias = torch.randn(40)
    _, _, b_q, b_s = mxfp8_operands(33, 40, 96)
    for scaling in ("rceil", "floor"):
        expected = dq.mxfp8_mm(*dq.quantize_mxfp8(x, scaling), b_q, b_s, bias, out_dtype=x.dtype)
        assert torch.equal(dq.mxfp8_linear(x, b_q, b_s, bias, scaling), expected)
    _, _, _, b_q4, b_s4, b_t4 = nvfp4_operands(33, 40, 96)
    for activation_scale in (None, torch.tensor(0.01)):
        expected = dq.nvfp4_mm(*dq.quantize_nvfp4(x, activation_scale), b_q4, b_s4, b_t4, bias, out_dtype=x.dtype)
        assert torch.equal(dq.nvfp4_linear(x, b_q4, b_s4, b_t4, activation_scale, bias), expected)
    with pytest.raises(ValueError, match="x must be a 2-D"):
        dq.mxfp8_linear(x[None], b_q, b_s)
    with pytest.raises(ValueError, match="K = 64"):
        dq.mxfp8_linear(x[:, :64], b_q, b_s)
    with pytest.raises(ValueError, match="activation_scale"):
        dq.nvfp4_linear(x, b_q4, b_s4, b_t4, torch.ones(2))


# ---------------------------------------------------------------------------------------------- compile


def test_fullgraph_compile_quantize_and_multiply():
    w = torch.randn(64, 128)
    w_q, w_s = dq.quantize_mxfp8(w)
    v_q, v_s, v_t = dq.quantize_nvfp4(w)

    def linear(x):
        a_q, a_s = dq.quantize_mxfp8(x)
        y = dq.mxfp8_mm(a_q, a_s, w_q, w_s, out_dtype=torch.float32)
        a_q, a_s, a_t = dq.quantize_nvfp4(x)
        return y + dq.nvfp4_mm(a_q, a_s, a_t, v_q, v_s, v_t, out_dtype=torch.float32)

    x = torch.randn(3, 5, 128)
    compiled = torch.compile(linear, fullgraph=True, backend="inductor")
    assert torch.equal(compiled(x), linear(x))


# ---------------------------------------------------------------------------------------------- numerics


SHAPES = [(1, 64, 32), (77, 1000, 160), (129, 96, 4160), (16, 40, 96)]


@pytest.mark.parametrize("backend", ["reference", "torchao"])
@pytest.mark.parametrize("m,n,k", SHAPES)
def test_mxfp8_mm_matches_fp64(backend, m, n, k):
    a_q, a_s, b_q, b_s = mxfp8_operands(m, n, k, seed=m + n)
    bias = torch.randn(n)
    ref = fp64_product(dq.dequantize_mxfp8(a_q, a_s, torch.float32), dq.dequantize_mxfp8(b_q, b_s, torch.float32))
    ref = ref + bias.double()
    out32 = dq.mxfp8_mm(a_q, a_s, b_q, b_s, bias, torch.float32, backend=backend)
    out16 = dq.mxfp8_mm(a_q, a_s, b_q, b_s, bias, torch.bfloat16, backend=backend)
    assert out32.shape == (m, n) and out32.dtype == torch.float32 and out16.dtype == torch.bfloat16
    # torchao's EMULATED path multiplies in the output dtype; the reference always in float32
    assert rel_err(out32, ref) < 1e-5
    assert rel_err(out16, ref) < 4e-3


@pytest.mark.parametrize("backend", ["reference", "torchao"])
@pytest.mark.parametrize("m,n,k", SHAPES)
def test_nvfp4_mm_matches_fp64(backend, m, n, k):
    a_q, a_s, a_t, b_q, b_s, b_t = nvfp4_operands(m, n, k, seed=m * n)
    ref = fp64_product(
        dq.dequantize_nvfp4(a_q, a_s, a_t, torch.float32), dq.dequantize_nvfp4(b_q, b_s, b_t, torch.float32)
    )
    out32 = dq.nvfp4_mm(a_q, a_s, a_t, b_q, b_s, b_t, out_dtype=torch.float32, backend=backend)
    out16 = dq.nvfp4_mm(a_q, a_s, a_t, b_q, b_s, b_t, out_dtype=torch.float16, backend=backend)
    assert rel_err(out32, ref) < 1e-5
    assert rel_err(out16, ref) < 2e-3


def test_torchao_backend_quantize_is_bit_identical():
    x = torch.randn(77, 160, dtype=torch.float16)
    for scaling in ("rceil", "floor"):
        q1, s1 = dq.quantize_mxfp8(x, scaling, backend="reference")
        q2, s2 = dq.quantize_mxfp8(x, scaling, backend="torchao")
        assert torch.equal(q1.view(torch.uint8), q2.view(torch.uint8)) and torch.equal(s1, s2)
    r, t = dq.quantize_nvfp4(x, backend="reference"), dq.quantize_nvfp4(x, backend="torchao")
    assert torch.equal(r[0], t[0]) and torch.equal(r[1].view(torch.uint8), t[1].view(torch.uint8)) and torch.equal(r[2], t[2])


def test_given_tensor_scale_is_not_aliased():
    ts = torch.tensor(0.5)
    _, _, out = dq.quantize_nvfp4(torch.randn(4, 32), ts)
    assert out.data_ptr() != ts.data_ptr() and out.item() == 0.5


# ---------------------------------------------------------------------------------------------- errors


def test_quantize_errors_name_the_argument():
    with pytest.raises(TypeError, match=r"x must be bfloat16, float16 or float32, got torch.int32"):
        dq.quantize_mxfp8(torch.ones(4, 32, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"K = 48\) must be a positive multiple of the block size 32"):
        dq.quantize_mxfp8(torch.randn(4, 48))
    with pytest.raises(ValueError, match=r"K = 40\) must be a positive multiple of the block size 16"):
        dq.quantize_nvfp4(torch.randn(4, 40))
    with pytest.raises(ValueError, match=r"M = 0"):
        dq.quantize_mxfp8(torch.randn(0, 32))
    with pytest.raises(ValueError, match=r"scaling must be one of"):
        dq.quantize_mxfp8(torch.randn(4, 32), "nearest")
    with pytest.raises(TypeError, match=r"tensor_scale must be float32, got torch.float16"):
        dq.quantize_nvfp4(torch.randn(4, 32), torch.tensor(1.0, dtype=torch.float16))
    with pytest.raises(ValueError, match=r"tensor_scale must have exactly one element"):
        dq.quantize_nvfp4(torch.randn(4, 32), torch.ones(2))


def test_mm_wrong_qdata_dtype():
    a_q, a_s, b_q, b_s = mxfp8_operands(4, 8, 64)
    with pytest.raises(TypeError, match=r"a_q must be torch.float8_e4m3fn \(mxfp8 qdata\), got torch.uint8"):
        dq.mxfp8_mm(a_q.view(torch.uint8), a_s, b_q, b_s)
    a_q, a_s, a_t, b_q, b_s, b_t = nvfp4_operands(4, 8, 64)
    with pytest.raises(TypeError, match=r"b_q must be torch.uint8 \(nvfp4 qdata\)"):
        dq.nvfp4_mm(a_q, a_s, a_t, b_q.view(torch.int8), b_s, b_t)


def test_mm_wrong_scale_size_and_dtype():
    a_q, a_s, b_q, b_s = mxfp8_operands(4, 8, 160)
    with pytest.raises(ValueError, match=r"b_s must hold round_up\(8, 128\) \* round_up\(5, 4\) = 1024 scales.*got shape \(640,\)"):
        dq.mxfp8_mm(a_q, a_s, b_q, b_s.flatten()[:640], None)
    with pytest.raises(TypeError, match=r"a_s must be torch.uint8 \(mxfp8 block scales\), got torch.float8_e8m0fnu"):
        dq.mxfp8_mm(a_q, a_s.view(torch.float8_e8m0fnu), b_q, b_s)
    a_q, a_s, a_t, b_q, b_s, b_t = nvfp4_operands(4, 8, 64)
    with pytest.raises(TypeError, match=r"a_s must be torch.float8_e4m3fn \(nvfp4 block scales\), got torch.uint8"):
        dq.nvfp4_mm(a_q, a_s.view(torch.uint8), a_t, b_q, b_s, b_t)
    with pytest.raises(TypeError, match=r"b_ts must be float32, got torch.bfloat16"):
        dq.nvfp4_mm(a_q, a_s, a_t, b_q, b_s, b_t.bfloat16())


def test_mm_k_mismatch_and_bad_k():
    a_q, a_s, _, _ = mxfp8_operands(4, 8, 64)
    _, _, b_q, b_s = mxfp8_operands(4, 8, 96)
    with pytest.raises(ValueError, match=r"a_q holds K = 64 but b_q holds K = 96"):
        dq.mxfp8_mm(a_q, a_s, b_q, b_s)
    q = torch.zeros(4, 48, dtype=torch.float8_e4m3fn)
    with pytest.raises(ValueError, match=r"K = 48 \(from a_q.shape \(4, 48\)\) must be a positive multiple of 32"):
        dq.mxfp8_mm(q, a_s, b_q, b_s)


def test_mm_non_contiguous_and_m_zero():
    a_q, a_s, b_q, b_s = mxfp8_operands(64, 64, 64)
    with pytest.raises(ValueError, match=r"b_q must be contiguous"):
        dq.mxfp8_mm(a_q, a_s, b_q.t(), b_s)
    empty = torch.empty(0, 64, dtype=torch.float8_e4m3fn)
    with pytest.raises(ValueError, match=r"a_q has 0 rows"):
        dq.mxfp8_mm(empty, a_s, b_q, b_s)


def test_mm_bias_and_out_dtype_errors():
    a_q, a_s, b_q, b_s = mxfp8_operands(4, 8, 64)
    with pytest.raises(ValueError, match=r"bias must have shape \[N\] = \[8\], got \(4,\)"):
        dq.mxfp8_mm(a_q, a_s, b_q, b_s, torch.randn(4))
    with pytest.raises(TypeError, match=r"bias must be bfloat16, float16 or float32, got torch.int64"):
        dq.mxfp8_mm(a_q, a_s, b_q, b_s, torch.ones(8, dtype=torch.int64))
    with pytest.raises(TypeError, match=r"out_dtype must be torch.bfloat16, torch.float16 or torch.float32, got torch.float8_e4m3fn"):
        dq.mxfp8_mm(a_q, a_s, b_q, b_s, None, torch.float8_e4m3fn)


def test_dequantize_errors():
    q, s = dq.quantize_mxfp8(torch.randn(4, 64))
    with pytest.raises(ValueError, match=r"s must hold round_up\(4, 128\) \* round_up\(2, 4\) = 512"):
        dq.dequantize_mxfp8(q, s[:64])
    with pytest.raises(TypeError, match=r"dequantize_mxfp8: dtype must be"):
        dq.dequantize_mxfp8(q, s, torch.int8)


@pytest.mark.gpu
def test_mismatched_devices():
    a_q, a_s, b_q, b_s = mxfp8_operands(4, 8, 64)
    with pytest.raises(ValueError, match=r"b_q is on cuda:0 but a_q is on cpu"):
        dq.mxfp8_mm(a_q, a_s, b_q.cuda(), b_s.cuda())
    with pytest.raises(ValueError, match=r"a_s is on cuda:0 but a_q is on cpu"):
        dq.mxfp8_mm(a_q, a_s.cuda(), b_q, b_s)
    a_q, a_s, a_t, b_q, b_s, b_t = nvfp4_operands(4, 8, 64)
    with pytest.raises(ValueError, match=r"a_ts is on cuda:0 but the operands are on cpu"):
        dq.nvfp4_mm(a_q, a_s, a_t.cuda(), b_q, b_s, b_t)


def test_mismatched_devices_on_cpu_with_meta():
    # the same check without a GPU: a meta tensor is a different device
    a_q, a_s, b_q, b_s = mxfp8_operands(4, 8, 64)
    with pytest.raises(ValueError, match=r"b_q is on meta but a_q is on cpu"):
        dq.mxfp8_mm(a_q, a_s, b_q.to("meta"), b_s.to("meta"))


def test_scales_of_padded_layout_are_required():
    # K = 160: 5 scale columns pad to 8; a size check that ignores the padding would accept 5 * 128
    q, s = dq.quantize_mxfp8(torch.randn(3, 160))
    assert s.numel() == 128 * 8
    assert formats.swizzled_scale_shape(3, 5) == (128, 8)


# ---------------------------------------------------------------------------------------------- review fixes


@pytest.mark.parametrize("backend", ["reference", "torchao"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_quantize_of_a_transposed_input_is_row_major(backend, dtype):
    x = torch.randn(96, 64, dtype=dtype).t()  # [64, 96], column-major
    q, s = dq.quantize_mxfp8(x, backend=backend)
    assert q.is_contiguous() and torch.equal(q.view(torch.uint8), dq.quantize_mxfp8(x.contiguous())[0].view(torch.uint8))
    q, s, t = dq.quantize_nvfp4(x, backend=backend)
    assert q.is_contiguous() and torch.equal(q, dq.quantize_nvfp4(x.contiguous())[0])
    torch.library.opcheck(torch.ops.dq_kernels.quantize_mxfp8.default, (x, "rceil", backend), test_utils=ALL_CHECKS)


def test_all_zero_nvfp4_tensor_decodes_to_zeros():
    zeros = torch.zeros(8, 64)
    q, s, t = dq.quantize_nvfp4(zeros)
    assert t.item() == 0.0 and not torch.isnan(s.float()).any()
    assert torch.equal(dq.dequantize_nvfp4(q, s, t, torch.float32), zeros)
    w = dq.quantize_nvfp4(torch.randn(16, 64))
    out = dq.nvfp4_mm(q, s, t, *w, out_dtype=torch.float32)
    assert torch.equal(out, torch.zeros(8, 16))


def test_reference_stays_ieee_under_medium_matmul_precision():
    a_q, a_s, b_q, b_s = mxfp8_operands(64, 64, 256)
    exact = dq.mxfp8_mm(a_q, a_s, b_q, b_s, out_dtype=torch.float32, backend="reference")
    saved = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        again = dq.mxfp8_mm(a_q, a_s, b_q, b_s, out_dtype=torch.float32, backend="reference")
    finally:
        torch.set_float32_matmul_precision(saved)
    assert torch.equal(exact, again)


# ---------------------------------------------------------------------------------------------- W4A16


@pytest.mark.parametrize("backend", ["reference", "torchao"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("m,n,k", [(1, 1000, 160), (16, 64, 4160), (77, 96, 96)])
def test_nvfp4_weight_only_mm_matches_fp64(backend, dtype, m, n, k):
    g = torch.Generator().manual_seed(m + n + k)
    a = torch.randn(m, k, generator=g).to(dtype)
    b_q, b_s, b_ts = dq.quantize_nvfp4(torch.randn(n, k, generator=g))
    bias = torch.randn(n, generator=g).to(dtype)
    ref = fp64_product(a.float(), dq.dequantize_nvfp4(b_q, b_s, b_ts, torch.float32)) + bias.double()
    out = dq.nvfp4_weight_only_mm(a, b_q, b_s, b_ts, bias, backend=backend)
    assert out.shape == (m, n) and out.dtype == dtype
    # the reference multiplies in float32; torchao's path in the activation's dtype
    bound = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 8e-3}[dtype]
    assert rel_err(out, ref) < bound


def test_opcheck_and_errors_of_nvfp4_weight_only_mm():
    a = torch.randn(33, 96, dtype=torch.bfloat16)
    b = dq.quantize_nvfp4(torch.randn(40, 96))
    opcheck(torch.ops.dq_kernels.nvfp4_weight_only_mm.default, (a, *b, torch.randn(40), None), float8_inputs=True)
    with pytest.raises(ValueError, match=r"a holds K = 64 but b_q holds K = 96"):
        dq.nvfp4_weight_only_mm(torch.randn(3, 64), *b)
    with pytest.raises(TypeError, match=r"a must be bfloat16, float16 or float32, got torch.int32"):
        dq.nvfp4_weight_only_mm(torch.ones(3, 96, dtype=torch.int32), *b)
    with pytest.raises(ValueError, match=r"a must be a 2-D \[M, K\] tensor"):
        dq.nvfp4_weight_only_mm(torch.randn(2, 3, 96), *b)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_ops_run_on_their_tensors_device():
    """The quantize and mm ops on cuda:1 while cuda:0 is current equal the same ops on cuda:0 (each
    op makes its tensors' device current while its kernels launch)."""
    x = torch.randn(16, 256, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(1))
    results = []
    for device in ("cuda:0", "cuda:1"):
        with torch.cuda.device(0):
            a_q, a_s = dq.quantize_mxfp8(x.to(device))
            b_q, b_s = dq.quantize_mxfp8(w.to(device))
            n_q, n_s, n_ts = dq.quantize_nvfp4(x.to(device))
            m_q, m_s, m_ts = dq.quantize_nvfp4(w.to(device))
            results.append([
                dq.mxfp8_mm(a_q, a_s, b_q, b_s, out_dtype=torch.float32),
                dq.nvfp4_mm(n_q, n_s, n_ts, m_q, m_s, m_ts, out_dtype=torch.float32),
                dq.nvfp4_weight_only_mm(x.to(device), m_q, m_s, m_ts),
            ])
    for on_0, on_1 in zip(*results):
        assert on_1.device == torch.device("cuda:1")
        assert torch.equal(on_0.cpu(), on_1.cpu())
