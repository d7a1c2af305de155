"""The activation cast fused into the op before it under torch.compile (issue 22, docs/compile.md):
the direct row form and decoded NVFP4 values in formats, the decoded mm ops, when a traced quantized
Linear decomposes (DQ_KERNELS_COMPILE_CAST, M, symbolic M), and inductor's compiled output against
the eager linear op, bit for bit, with a registered backend that takes the decoded activation."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

import dq_kernels as dq
from dq_kernels import backends, formats, ops

SKINNY_MAX_M = 64  # the test backend takes the decoded activation above this M, as cutlass does on 9.0


class DecodedTestBackend(dq.Backend):
    """A CPU backend registered through the public API whose mm ops take the decoded activation
    above M = 64 (the reference's decoded GEMMs); counts the calls of each method."""

    spec = dq.BackendSpec(name="decoded_test", description="test double", ops=("mxfp8_mm", "nvfp4_mm"), cpu=True)

    def __init__(self):
        self.reference = backends.get_backend("reference")
        self.calls = dict.fromkeys(("mxfp8_mm", "nvfp4_mm", "mxfp8_mm_row_form", "nvfp4_mm_decoded"), 0)

    def takes_decoded_activation(self, op, device, m):
        return m > SKINNY_MAX_M

    def _call(self, method, *args):
        self.calls[method] += 1
        return getattr(self.reference, method)(*args)

    def mxfp8_mm(self, *args):
        return self._call("mxfp8_mm", *args)

    def nvfp4_mm(self, *args):
        return self._call("nvfp4_mm", *args)

    def mxfp8_mm_row_form(self, *args):
        return self._call("mxfp8_mm_row_form", *args)

    def nvfp4_mm_decoded(self, *args):
        return self._call("nvfp4_mm_decoded", *args)


@pytest.fixture
def decoded_backend(monkeypatch):
    monkeypatch.delenv(ops.ENV_COMPILE_CAST, raising=False)
    backend = dq.register_backend(DecodedTestBackend())
    torch._dynamo.reset()
    yield backend
    torch._dynamo.reset()
    dq.unregister_backend(backend.spec.name)


def randn(*shape, seed=0, dtype=torch.bfloat16):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


# ---------------------------------------------------------------------------------------------- formats


def test_exact_float32_is_float_on_every_16_bit_pattern():
    bits = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)
    for dtype in (torch.bfloat16, torch.float16):
        x = bits.view(dtype)
        exact, plain = formats._exact_float32(x), x.float()
        nan = torch.isnan(plain)
        assert torch.equal(torch.isnan(exact), nan)
        assert torch.equal(exact[~nan].view(torch.int32), plain[~nan].view(torch.int32))  # -0.0 included


def edge_rows(dtype):
    """[8, 96]: a zero row, NaN, inf, values at the dtype's extremes, subnormals, and rows whose block
    scales span more than 22 binades (flagged in the row form)."""
    x = randn(8, 96, seed=3, dtype=torch.float32)
    x[0] = 0.0
    x[1, 5] = float("nan")
    x[2, 40] = float("inf")
    x[3, :32] *= 2.0**-20  # blocks 2^-20 below the row's largest: flagged
    x[4] = torch.finfo(dtype).max if dtype != torch.float32 else 3e38
    x[5] = torch.finfo(dtype).tiny * torch.linspace(-2, 2, 96)  # around the smallest normal, subnormals
    x[6, 32:64] = 0.0  # a zero block beside others
    x[7] *= -1.0
    return x.to(dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("scaling", formats.SCALING_MODES)
def test_quantize_mxfp8_row_form_is_the_row_form_of_quantize_mxfp8(dtype, scaling):
    for x in (randn(3, 5, 128, seed=1, dtype=dtype), edge_rows(dtype)):
        values, row_exp = formats.quantize_mxfp8_row_form(x, scaling)
        expected_values, expected_row_exp = formats.mxfp8_row_form(*formats.quantize_mxfp8(x, scaling))
        assert torch.equal(row_exp, expected_row_exp)
        assert torch.equal(values.view(torch.int16), expected_values.view(torch.int16))
    assert (row_exp == formats.MXFP8_ROW_FLAGGED).any()  # the edge rows reach the flagged form


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("static", [False, True])
def test_quantize_dequantize_nvfp4_is_the_decode_without_tensor_scale(dtype, static):
    x = randn(3, 5, 64, seed=2, dtype=dtype)
    ts = torch.tensor(0.01) if static else None
    values, x_ts = formats.quantize_dequantize_nvfp4(x, ts)
    q, s, expected_ts = formats.quantize_nvfp4(x, ts)
    assert torch.equal(x_ts, expected_ts)
    expected = formats.dequantize_nvfp4(q, s, torch.ones(()), torch.float16)
    assert torch.equal(values.view(torch.int16), expected.view(torch.int16))


def test_dequantize_mxfp8_row_form_is_the_float32_decode():
    x = edge_rows(torch.bfloat16)[1:]  # row 0: the zero row (bytes 0, decoded as q * 2^R: zeros either way)
    q, s = formats.quantize_mxfp8(x)
    got, expected = formats.dequantize_mxfp8_row_form(*formats.mxfp8_row_form(q, s)), formats.dequantize_mxfp8(q, s, torch.float32)
    nan = torch.isnan(expected)
    assert torch.equal(torch.isnan(got), nan) and torch.equal(got[~nan], expected[~nan])


# ---------------------------------------------------------------------------------------------- the decoded ops


def weights(n=64, k=128, seed=5):
    w = randn(n, k, seed=seed, dtype=torch.float32)
    return formats.quantize_mxfp8(w), formats.quantize_nvfp4(w)


def test_decoded_ops_on_the_reference_equal_the_mm_ops():
    (b_q, b_s), (v_q, v_s, v_ts) = weights()
    x, bias = randn(72, 128, seed=6), randn(64, seed=7)
    values, row_exp = formats.quantize_mxfp8_row_form(x)
    got = dq.mxfp8_mm_row_form(values, row_exp, b_q, b_s, bias, torch.bfloat16, backend="reference")
    assert torch.equal(got, dq.mxfp8_mm(*formats.quantize_mxfp8(x), b_q, b_s, bias, backend="reference"))
    values, x_ts = formats.quantize_dequantize_nvfp4(x)
    got = dq.nvfp4_mm_decoded(values, x_ts, v_q, v_s, v_ts, bias, torch.float32, backend="reference")
    expected = dq.nvfp4_mm(*formats.quantize_nvfp4(x), v_q, v_s, v_ts, bias, torch.float32, backend="reference")
    assert torch.equal(got, expected)


def test_decoded_ops_check_their_arguments():
    (b_q, b_s), (v_q, v_s, v_ts) = weights()
    values, row_exp = formats.quantize_mxfp8_row_form(randn(72, 128))
    with pytest.raises(TypeError, match="values must be float16"):
        dq.mxfp8_mm_row_form(values.view(torch.bfloat16), row_exp, b_q, b_s)
    with pytest.raises(ValueError, match=r"row_exp must be contiguous \[M\] = \[72\]"):
        dq.mxfp8_mm_row_form(values, row_exp[:8], b_q, b_s)
    with pytest.raises(ValueError, match="values holds K = 64 but b_q holds K = 128"):
        dq.mxfp8_mm_row_form(values[:, :64].contiguous(), row_exp, b_q, b_s)
    with pytest.raises(TypeError, match="x_ts must be float32"):
        dq.nvfp4_mm_decoded(values, torch.ones((), dtype=torch.float16), v_q, v_s, v_ts)
    with pytest.raises(dq.BackendUnavailableError, match="does not implement nvfp4_mm_decoded"):
        dq.nvfp4_mm_decoded(values, torch.ones(()), v_q, v_s, v_ts, backend="torchao")


def test_compile_cast_switch(monkeypatch):
    monkeypatch.delenv(ops.ENV_COMPILE_CAST, raising=False)
    assert ops.compile_cast() == "fused"
    monkeypatch.setenv(ops.ENV_COMPILE_CAST, "op")
    assert ops.compile_cast() == "op"
    monkeypatch.setenv(ops.ENV_COMPILE_CAST, "fuse")
    with pytest.raises(ValueError, match="DQ_KERNELS_COMPILE_CAST='fuse' must be one of"):
        ops.compile_cast()


# ---------------------------------------------------------------------------------------------- when a traced Linear decomposes


def quantized_linear(fmt, backend, k=128, n=64, seed=5, **options):
    w = randn(n, k, seed=seed, dtype=torch.float32)
    if fmt == "nvfp4":
        return dq.NVFP4Weight.from_float(w, backend=backend, **options)
    return dq.MXFP8Weight.from_float(w, backend=backend, **options)


@pytest.mark.parametrize("fmt", ["mxfp8", "nvfp4"])
def test_traced_linear_decomposes_above_the_skinny_range_only(fmt, decoded_backend, monkeypatch):
    w = quantized_linear(fmt, "decoded_test")
    decoded = "mxfp8_mm_row_form" if fmt == "mxfp8" else "nvfp4_mm_decoded"
    mm = f"{fmt}_mm"

    def run(x, **compile_options):
        decoded_backend.calls.update(dict.fromkeys(decoded_backend.calls, 0))
        with torch.no_grad():
            out = torch.compile(lambda x: F.linear(x, w), fullgraph=True, backend="aot_eager", **compile_options)(x)
        torch._dynamo.reset()
        assert torch.equal(out, F.linear(x, w))  # eager: the linear op's body
        return decoded_backend.calls[decoded], decoded_backend.calls[mm] - 1  # minus the eager call

    assert run(randn(72, 128)) == (1, 0)
    assert run(randn(SKINNY_MAX_M, 128)) == (0, 1)
    x = randn(72, 128)
    torch._dynamo.mark_dynamic(x, 0)
    assert run(x) == (0, 1)  # a symbolic M keeps the linear op
    monkeypatch.setenv(ops.ENV_COMPILE_CAST, "op")
    assert run(randn(72, 128)) == (0, 1)


def test_a_linear_autograd_records_keeps_the_linear_op(decoded_backend):
    w = quantized_linear("mxfp8", "decoded_test")
    F.linear(randn(72, 128).requires_grad_(), w)  # eager, through the custom op for autograd's sake
    assert decoded_backend.calls["mxfp8_mm"] == 1 and decoded_backend.calls["mxfp8_mm_row_form"] == 0


# ---------------------------------------------------------------------------------------------- inductor, bit for bit


class Block(torch.nn.Module):
    """FLUX-like pieces in front of four quantized linears: LayerNorm + modulation (bf16), GELU
    (float16), and two single products x * scale, whose bits inductor computes as eager does (one
    rounding) and whose casts inductor fuses into the same loop, the case where it would hand the
    cast the product before its rounding. Returns the norm and GELU outputs too, so the test can
    run the eager linear op on exactly what the compiled code fed those casts."""

    def __init__(self, linears):
        super().__init__()
        self.norm = torch.nn.LayerNorm(128, elementwise_affine=False, eps=1e-6)
        self.a, self.b, self.c, self.d = linears

    def forward(self, x, scale, shift):
        h = self.norm(x) * (1 + scale) + shift
        a = self.a(h)
        g = F.gelu(a, approximate="tanh").half()
        return h, g, a, self.b(x * scale), self.c(g), self.d(x.half() * scale.half())


def linear_module(weight):
    linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    linear.weight = torch.nn.Parameter(weight, requires_grad=False)
    return linear


def test_inductor_output_equals_the_eager_linear_op(decoded_backend):
    block = Block(
        [
            linear_module(quantized_linear("mxfp8", "decoded_test", n=128, seed=1)),  # rceil
            linear_module(quantized_linear("nvfp4", "decoded_test", n=64, seed=2, activation_amax=3.0)),  # static
            linear_module(quantized_linear("mxfp8", "decoded_test", n=64, seed=3, scaling="floor")),
            linear_module(quantized_linear("nvfp4", "decoded_test", n=64, seed=4)),  # dynamic
        ]
    )
    x, scale, shift = randn(2, 40, 128, seed=8), randn(128, seed=9), randn(128, seed=10)
    with torch.no_grad():
        h, g, *outs = torch.compile(block, fullgraph=True, backend="inductor")(x, scale, shift)
        activations = (h, x * scale, g, x.half() * scale.half())
        expected = [F.linear(a, linear.weight) for a, linear in zip(activations, (block.a, block.b, block.c, block.d))]
    assert decoded_backend.calls["mxfp8_mm_row_form"] == 2 and decoded_backend.calls["nvfp4_mm_decoded"] == 2
    for got, want in zip(outs, expected):
        assert torch.equal(got, want)


def test_inductor_fuses_the_gelu_into_the_cast(decoded_backend):
    from torch._inductor.utils import run_and_get_code

    linear = linear_module(quantized_linear("mxfp8", "decoded_test"))
    x = randn(72, 128, seed=11)
    with torch.no_grad():
        _, (code,) = run_and_get_code(torch.compile(lambda x: linear(F.gelu(x)), fullgraph=True), x)
    kernels = code.split("async_compile.cpp_pybinding(")[1:]
    with_gelu = [kernel for kernel in kernels if "erf" in kernel]
    assert with_gelu and all("Half" in kernel for kernel in with_gelu)  # every GELU feeds the f16 row form
    assert "mxfp8_mm_row_form" in code and "mxfp8_linear" not in code


# ---------------------------------------------------------------------------------------------- on the GPU


def cutlass_row_form_backend():
    """cutlass, asked to take the MXFP8 activation in the row form above the skinny range too (its
    own takes_decoded_activation declines MXFP8 until a one-pass CUDA row-form cast exists)."""
    from dq_kernels.backends.cutlass import CutlassBackend

    class CutlassRowForm(CutlassBackend):
        spec = dataclasses.replace(CutlassBackend.spec, name="cutlass_row_form")

        def takes_decoded_activation(self, op, device, m):
            return CutlassBackend.takes_decoded_activation(self, "nvfp4_mm", device, m)  # 9.0, M > 64

    return CutlassRowForm()


@pytest.mark.gpu
@pytest.mark.parametrize("fmt,options", [("mxfp8", {}), ("mxfp8", {"scaling": "floor"}), ("nvfp4", {}),
                                         ("nvfp4", {"activation_amax": 3.0})])
def test_gpu_inductor_cast_equals_the_cast_kernels_and_the_linear_op(fmt, options, monkeypatch):
    """On a 9.0 GPU with cutlass: inductor's fused cast gives the Triton cast kernel's bits, and the
    compiled Linear the eager one's."""
    from dq_kernels.backends import triton_cast
    from dq_kernels.backends.cutlass import CutlassBackend

    device = torch.device("cuda")
    if torch.cuda.get_device_capability() != (9, 0) or not backends.get_backend("cutlass").availability_on(device)[0]:
        pytest.skip("needs a 9.0 GPU and the cutlass backend built for it")
    if fmt == "mxfp8" and not hasattr(CutlassBackend, "mxfp8_mm_row_form"):
        pytest.skip("needs cutlass's mxfp8_mm_row_form (helper h1's branch)")
    monkeypatch.delenv(ops.ENV_COMPILE_CAST, raising=False)
    name = "cutlass" if fmt == "nvfp4" else dq.register_backend(cutlass_row_form_backend()).spec.name
    try:
        torch._dynamo.reset()
        w = linear_module(quantized_linear(fmt, name, k=512, n=384, **options).cuda())
        x, scale = randn(4, 96, 512, seed=12).cuda(), randn(512, seed=13).cuda()
        x[0, 0, :64] *= 2.0**-30  # blocks far below the row's largest: a flagged MXFP8 row

        def cast(a):
            if fmt == "nvfp4":
                return formats.quantize_dequantize_nvfp4(a, w.weight.activation_scale)
            return formats.quantize_mxfp8_row_form(a, options.get("scaling", "rceil"))

        with torch.no_grad():
            got_cast = torch.compile(lambda x, s: cast(F.gelu(x) * s), fullgraph=True)(x, scale)
            got = torch.compile(lambda x, s: w(F.gelu(x) * s), fullgraph=True)(x, scale)
            a = torch.compile(lambda x, s: F.gelu(x) * s, fullgraph=True)(x, scale)  # the activation, stored
            if fmt == "nvfp4":
                want_cast = triton_cast.quantize_dequantize_nvfp4(a, w.weight.activation_scale)
            else:
                want_cast = formats.mxfp8_row_form(*triton_cast.quantize_mxfp8(a, options.get("scaling", "rceil")))
            want = F.linear(a, w.weight)
        for g, e in zip(got_cast, want_cast):
            assert torch.equal(g.view(torch.int16) if g.dtype == torch.float16 else g,
                               e.view(torch.int16) if e.dtype == torch.float16 else e)
        assert torch.equal(got, want)
    finally:
        torch._dynamo.reset()
        if name != "cutlass":
            dq.unregister_backend(name)
