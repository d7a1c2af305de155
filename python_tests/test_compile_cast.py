"""A traced quantized Linear as the decoded cast and the decoded mm (issue 22, docs/compile.md):
the decoded MXFP8 and NVFP4 values in formats and the decoded cast ops, the decoded mm ops, when a
traced quantized Linear decomposes (DQ_KERNELS_COMPILE_CAST, M, symbolic M), one cast shared by the
Linears that read one activation, and inductor's compiled output against the eager linear op, bit
for bit, with a registered backend that takes the decoded activation."""


import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import dq_kernels as dq
from dq_kernels import backends, formats, ops, tensor

SKINNY_MAX_M = 64  # the test backend takes the decoded activation above this M, as cutlass does on 9.0


class DecodedTestBackend(dq.Backend):
    """A CPU backend registered through the public API whose mm ops take the decoded activation
    above M = 64 (the reference's decoded GEMMs and casts); counts the calls of each method."""

    spec = dq.BackendSpec(
        name="decoded_test", description="test double", ops=("quantize_mxfp8", "quantize_nvfp4", "mxfp8_mm", "nvfp4_mm"),
        cpu=True,
    )
    METHODS = ("quantize_mxfp8", "quantize_nvfp4", "quantize_dequantize_mxfp8", "quantize_dequantize_nvfp4",
               "mxfp8_mm", "nvfp4_mm", "mxfp8_mm_decoded", "nvfp4_mm_decoded")

    def __init__(self):
        self.reference = backends.get_backend("reference")
        self.calls = dict.fromkeys(self.METHODS, 0)

    def takes_decoded_activation(self, op, device, m):
        return m > SKINNY_MAX_M

    def can_quantize_dequantize(self, fmt):
        return True

    def _call(self, method, *args):
        self.calls[method] += 1
        return getattr(self.reference, method)(*args)


def _counted(method):
    return lambda self, *args: self._call(method, *args)


for _method in DecodedTestBackend.METHODS:  # each op method: the reference's, counted
    setattr(DecodedTestBackend, _method, _counted(_method))


@pytest.fixture
def decoded_backend(monkeypatch):
    monkeypatch.setenv(ops.ENV_COMPILE_CAST, "fused")
    backend = dq.register_backend(DecodedTestBackend())
    torch._dynamo.reset()
    yield backend
    torch._dynamo.reset()
    dq.unregister_backend(backend.spec.name)


def randn(*shape, seed=0, dtype=torch.bfloat16):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


# ---------------------------------------------------------------------------------------------- formats


@pytest.mark.parametrize("dtype,decode,nans", [
    (torch.bfloat16, formats._exact_float32, 254),
    (torch.float16, formats._exact_float32, 2046),
    # the NVFP4 cast's block scale (Triton 3.6 cannot lower the float8 -> float64 conversion inductor
    # would make of ``s.float().double()``)
    (torch.float8_e4m3fn, formats._decode_e4m3, 2),
])
def test_bit_decodes_are_float_on_every_bit_pattern(dtype, decode, nans):
    width = torch.finfo(dtype).bits
    bits = torch.arange(-(2 ** (width - 1)), 2 ** (width - 1), dtype=torch.int32)
    x = bits.to({8: torch.int8, 16: torch.int16}[width]).view(dtype)
    decoded, plain = decode(x), x.float()
    nan = torch.isnan(plain)
    assert torch.equal(torch.isnan(decoded), nan) and nan.sum() == nans
    assert torch.equal(decoded[~nan].view(torch.int32), plain[~nan].view(torch.int32))  # -0.0 included


def edge_rows(dtype):
    """[8, 96]: a zero row, NaN, inf, values at the dtype's extremes, subnormals, and a row whose block
    scales span more than 22 binades."""
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
def test_quantize_dequantize_mxfp8_is_the_bf16_decode(dtype, scaling):
    for x in (randn(3, 5, 128, seed=1, dtype=dtype), edge_rows(dtype)):
        values = formats.quantize_dequantize_mxfp8(x, scaling)
        expected = formats.dequantize_mxfp8(*formats.quantize_mxfp8(x, scaling), torch.bfloat16)
        assert values.dtype == torch.bfloat16 and values.shape == expected.shape
        assert torch.equal(values.view(torch.int16), expected.view(torch.int16))


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


# ---------------------------------------------------------------------------------------------- the decoded ops


def weights(n=64, k=128, seed=5):
    w = randn(n, k, seed=seed, dtype=torch.float32)
    return formats.quantize_mxfp8(w), formats.quantize_nvfp4(w)


def test_decoded_ops_on_the_reference_equal_the_mm_ops():
    (b_q, b_s), (v_q, v_s, v_ts) = weights()
    x, bias = randn(72, 128, seed=6), randn(64, seed=7)
    values = formats.quantize_dequantize_mxfp8(x)
    got = dq.mxfp8_mm_decoded(values, b_q, b_s, bias, torch.bfloat16, backend="reference")
    assert torch.equal(got, dq.mxfp8_mm(*formats.quantize_mxfp8(x), b_q, b_s, bias, backend="reference"))
    values, x_ts = formats.quantize_dequantize_nvfp4(x)
    got = dq.nvfp4_mm_decoded(values, x_ts, v_q, v_s, v_ts, bias, torch.float32, backend="reference")
    expected = dq.nvfp4_mm(*formats.quantize_nvfp4(x), v_q, v_s, v_ts, bias, torch.float32, backend="reference")
    assert torch.equal(got, expected)


@pytest.mark.parametrize("static", [False, True])
def test_decoded_cast_ops_are_the_formats_decodes(static):
    x = randn(3, 24, 128, seed=8)
    assert torch.equal(dq.quantize_dequantize_mxfp8(x, "floor"), formats.quantize_dequantize_mxfp8(x, "floor"))
    ts = torch.tensor(0.01) if static else None
    values, x_ts = dq.quantize_dequantize_nvfp4(x, ts)
    expected_values, expected_ts = formats.quantize_dequantize_nvfp4(x, ts)
    assert torch.equal(values, expected_values) and torch.equal(x_ts, expected_ts)
    if static:
        assert x_ts.data_ptr() != ts.data_ptr()  # an op's outputs never alias its inputs
    with pytest.raises(ValueError, match="scaling must be one of"):
        dq.quantize_dequantize_mxfp8(x, "round")
    with pytest.raises(dq.BackendUnavailableError, match="does not implement quantize_dequantize_nvfp4"):
        dq.quantize_dequantize_nvfp4(x, backend="torchao")


def test_a_registered_backends_decoded_cast_is_checked(decoded_backend, monkeypatch):
    monkeypatch.setattr(DecodedTestBackend, "quantize_dequantize_mxfp8", lambda self, x, scaling: x.float())
    with pytest.raises(RuntimeError, match="'decoded_test' returned a wrong result from quantize_dequantize_mxfp8"):
        dq.quantize_dequantize_mxfp8(randn(8, 64), backend="decoded_test")


def test_decoded_ops_check_their_arguments():
    (b_q, b_s), (v_q, v_s, v_ts) = weights()
    values = formats.quantize_dequantize_mxfp8(randn(72, 128))
    with pytest.raises(TypeError, match="values must be bfloat16"):
        dq.mxfp8_mm_decoded(values.view(torch.float16), b_q, b_s)
    with pytest.raises(ValueError, match="values must be contiguous"):
        dq.mxfp8_mm_decoded(values.t().contiguous().t(), b_q, b_s)
    with pytest.raises(ValueError, match="values holds K = 64 but b_q holds K = 128"):
        dq.mxfp8_mm_decoded(values[:, :64].contiguous(), b_q, b_s)
    values, _ = formats.quantize_dequantize_nvfp4(randn(72, 128))
    with pytest.raises(TypeError, match="values must be float16"):
        dq.nvfp4_mm_decoded(values.view(torch.bfloat16), torch.ones(()), v_q, v_s, v_ts)
    with pytest.raises(TypeError, match="x_ts must be float32"):
        dq.nvfp4_mm_decoded(values, torch.ones((), dtype=torch.float16), v_q, v_s, v_ts)
    with pytest.raises(dq.BackendUnavailableError, match="does not implement nvfp4_mm_decoded"):
        dq.nvfp4_mm_decoded(values, torch.ones(()), v_q, v_s, v_ts, backend="torchao")


def test_compile_cast_switch(monkeypatch):
    monkeypatch.delenv(ops.ENV_COMPILE_CAST, raising=False)
    assert ops.compile_cast() == "shared"
    monkeypatch.setenv(ops.ENV_COMPILE_CAST, "")
    assert ops.compile_cast() == "shared"
    monkeypatch.setenv(ops.ENV_COMPILE_CAST, "fused")
    assert ops.compile_cast() == "fused"
    monkeypatch.setenv(ops.ENV_COMPILE_CAST, "op")
    assert ops.compile_cast() == "op"
    monkeypatch.setenv(ops.ENV_COMPILE_CAST, "fuse")
    with pytest.raises(ValueError, match="DQ_KERNELS_COMPILE_CAST='fuse' must be one of"):
        ops.compile_cast()


def test_compile_cache_key_sees_what_decides_the_trace(monkeypatch):
    """The AOT autograd cache key of a quantized weight changes with the cast mode, the backend name
    in effect (a use_backend block or the environment), the registered backends and the package's
    code; not with the weight's values."""
    monkeypatch.delenv(ops.ENV_COMPILE_CAST, raising=False)
    monkeypatch.delenv(backends.ENV_BACKEND, raising=False)
    weight = quantized_linear("mxfp8", None)
    key = weight._stable_hash_for_caching()
    assert quantized_linear("mxfp8", None, seed=6)._stable_hash_for_caching() == key
    with dq.use_backend("reference"):
        assert weight._stable_hash_for_caching() != key
    monkeypatch.setenv(backends.ENV_BACKEND, "reference")
    in_env = weight._stable_hash_for_caching()
    assert in_env != key
    with dq.use_backend("reference"):
        assert weight._stable_hash_for_caching() == in_env
    monkeypatch.setenv(ops.ENV_COMPILE_CAST, "fused")
    assert weight._stable_hash_for_caching() != in_env
    monkeypatch.delenv(ops.ENV_COMPILE_CAST)
    monkeypatch.delenv(backends.ENV_BACKEND)

    class Other(backends.get_backend("reference").__class__):
        spec = dq.BackendSpec(name="other_reference", description="test double", ops=("mxfp8_mm",), cpu=True)

    dq.register_backend(Other())
    try:
        assert weight._stable_hash_for_caching() != key
    finally:
        dq.unregister_backend("other_reference")
    assert weight._stable_hash_for_caching() == key
    monkeypatch.setattr(tensor, "_source_digest", lambda: "edited")  # the package's code changed
    assert weight._stable_hash_for_caching() != key


def test_pickled_state_carries_what_decides_the_trace(monkeypatch, tmp_path):
    """torch 2.11's AOT autograd cache keys a subclass input by its pickled state: that state
    changes with the cast mode; torch.save / torch.load give the weight back without it."""
    monkeypatch.delenv(ops.ENV_COMPILE_CAST, raising=False)
    weight = quantized_linear("nvfp4", None)
    state = torch._utils._get_obj_state(weight)
    monkeypatch.setenv(ops.ENV_COMPILE_CAST, "op")
    assert torch._utils._get_obj_state(weight)["traced_by"] != state["traced_by"]
    torch.save(weight, tmp_path / "w.pt")
    loaded = torch.load(tmp_path / "w.pt", weights_only=False)
    assert type(loaded) is type(weight) and "traced_by" not in loaded.__dict__
    assert torch.equal(loaded.dequantize(), weight.dequantize()) and loaded.backend == weight.backend


# Compiles q, k and v of one activation with the test backend and prints the casts run.
QKV_SCRIPT = """
import torch, torch.nn.functional as F
import dq_kernels as dq
from test_compile_cast import DecodedTestBackend, quantized_linear, randn
backend = dq.register_backend(DecodedTestBackend())
qkv = [quantized_linear("mxfp8", "decoded_test", n=96, seed=seed) for seed in (1, 2, 3)]
with torch.no_grad():
    torch.compile(lambda x: [F.linear(h, w) for h in [x * 2] for w in qkv], fullgraph=True)(randn(80, 128))
print(backend.calls["quantize_dequantize_mxfp8"])
"""


def test_a_graph_cached_on_disk_under_another_cast_mode_is_not_reused(tmp_path):
    """Two processes, one inductor cache directory: the "op" graph of the first is not what the
    second, with DQ_KERNELS_COMPILE_CAST=shared, runs (torch 2.11 reused it: the cache key missed
    the mode)."""
    tests = Path(__file__).parent
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path),
           "PYTHONPATH": os.pathsep.join([str(tests), os.environ.get("PYTHONPATH", "")])}
    casts = {}
    for mode in ("op", "shared"):
        done = subprocess.run([sys.executable, "-c", QKV_SCRIPT], env={**env, ops.ENV_COMPILE_CAST: mode},
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        casts[mode] = int(done.stdout.split()[-1])
    assert casts == {"op": 3, "shared": 1}


# ---------------------------------------------------------------------------------------------- when a traced Linear decomposes


def quantized_linear(fmt, backend, k=128, n=64, seed=5, **options):
    w = randn(n, k, seed=seed, dtype=torch.float32)
    if fmt == "nvfp4":
        return dq.NVFP4Weight.from_float(w, backend=backend, **options)
    return dq.MXFP8Weight.from_float(w, backend=backend, **options)


@pytest.mark.parametrize("fmt", ["mxfp8", "nvfp4"])
def test_traced_linear_decomposes_above_the_skinny_range_only(fmt, decoded_backend, monkeypatch):
    w = quantized_linear(fmt, "decoded_test")
    traced = []
    real = ops.traced_cast
    monkeypatch.setattr(ops, "traced_cast", lambda *args: traced.append(args) or real(*args))

    def decomposes(x):
        traced.clear()
        with torch.no_grad():
            out = torch.compile(lambda x: F.linear(x, w), fullgraph=True, backend="aot_eager")(x)
        torch._dynamo.reset()
        assert torch.equal(out, F.linear(x, w))  # eager: the linear op's body
        return bool(traced)

    assert decomposes(randn(72, 128))
    assert not decomposes(randn(SKINNY_MAX_M, 128))
    x = randn(72, 128)
    torch._dynamo.mark_dynamic(x, 0)
    assert not decomposes(x)  # a symbolic M keeps the linear op
    monkeypatch.setenv(ops.ENV_COMPILE_CAST, "shared")
    assert decomposes(randn(72, 128))  # the decoded cast op, then the decoded mm op
    monkeypatch.setenv(ops.ENV_COMPILE_CAST, "op")
    assert not decomposes(randn(72, 128))  # the default: the linear op


def test_a_linear_autograd_records_keeps_the_linear_op(decoded_backend, monkeypatch):
    def decomposed(*args):
        raise AssertionError("a Linear autograd records was decomposed")

    monkeypatch.setattr(ops, "traced_cast", decomposed)
    w = quantized_linear("mxfp8", "decoded_test")
    F.linear(randn(72, 128).requires_grad_(), w)  # eager, through the custom op for autograd's sake
    assert decoded_backend.calls["mxfp8_mm_decoded"] == 1  # the linear op's one-pass hand-over


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])  # bench model: inference_mode
@pytest.mark.parametrize("mode", ["shared", "fused"])
@pytest.mark.parametrize("fmt", ["mxfp8", "nvfp4"])
def test_traced_linears_reading_one_activation_share_its_cast(fmt, mode, context, decoded_backend, monkeypatch):
    """Three Linears on one activation (FLUX's q, k, v): one decoded cast in the graph; after an
    in-place change of the activation, a cast of its own; another scaling / static activation
    scale, another cast. Every output equals the eager Linear's, bit for bit."""
    from torch._inductor.utils import run_and_get_code

    monkeypatch.setenv(ops.ENV_COMPILE_CAST, mode)
    other = {"scaling": "floor"} if fmt == "mxfp8" else {"activation_amax": 3.0}
    linears = [quantized_linear(fmt, "decoded_test", n=96, seed=seed) for seed in (1, 2, 3, 4)]
    linears.append(quantized_linear(fmt, "decoded_test", n=96, seed=5, **other))

    def block(x):
        h = x * 2
        outs = [F.linear(h, w) for w in linears[:3]] + [F.linear(h, linears[4])]
        h.add_(1)
        return outs + [F.linear(h, linears[3])]

    made, asked = [], []  # casts made and asked for, over every tracing pass
    share = ops._TRACED_CASTS.get
    monkeypatch.setattr(ops._TRACED_CASTS, "get", lambda x, key, option, make: asked.append(key) or share(
        x, key, option, lambda: made.append(key) or make()))
    x = randn(2, 40, 128, seed=6)  # each Linear folds it into a [80, 128] view of its own
    with context():
        want = block(x.clone())
        decoded_backend.calls.update(dict.fromkeys(decoded_backend.calls, 0))
        got, (code,) = run_and_get_code(torch.compile(block, fullgraph=True), x.clone())
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g, w)
    assert made and len(made) * 5 == len(asked) * 3  # in every pass: 3 casts for the 5 Linears
    assert decoded_backend.calls[f"{fmt}_mm_decoded"] == 5
    if mode == "shared":
        assert decoded_backend.calls[f"quantize_dequantize_{fmt}"] == 3
        assert code.count(f"quantize_dequantize_{fmt}.default(") == 3
    else:  # torch ops that inductor compiles: no cast op called
        assert decoded_backend.calls[f"quantize_dequantize_{fmt}"] == 0


def test_eager_linears_under_a_dispatch_mode_never_share_a_cast(decoded_backend, monkeypatch):
    """Eager calls under a dispatch mode (FlopCounterMode) take the traced path on real tensors: each
    casts its own activation, also after a change the version counter does not see, and under
    inference_mode (whose tensors have no version counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    monkeypatch.setenv(ops.ENV_COMPILE_CAST, "shared")
    w = quantized_linear("mxfp8", "decoded_test", n=96)
    x, y = randn(80, 128, seed=8), randn(80, 128, seed=9)
    for context in (torch.no_grad, torch.inference_mode):
        with context():
            a = x.clone()
            with FlopCounterMode(display=False):
                first = F.linear(a, w)
                a.data.copy_(y)  # .data: no version bump
                second = F.linear(a, w)
        assert torch.equal(first, F.linear(x, w)) and torch.equal(second, F.linear(y, w))


def test_a_cast_backend_without_the_decoded_cast_keeps_the_linear_op(decoded_backend, monkeypatch):
    monkeypatch.setenv(ops.ENV_COMPILE_CAST, "shared")
    monkeypatch.setattr(DecodedTestBackend, "can_quantize_dequantize", lambda self, fmt: False)
    w = quantized_linear("mxfp8", "decoded_test", n=96)
    x = randn(80, 128, seed=10)
    with torch.no_grad():
        out = torch.compile(lambda x: F.linear(x, w), fullgraph=True, backend="aot_eager")(x)
    assert decoded_backend.calls["mxfp8_mm"] == 1 and decoded_backend.calls["mxfp8_mm_decoded"] == 0
    assert torch.equal(out, F.linear(x, w))


def test_a_cast_is_not_shared_across_traces(decoded_backend, monkeypatch):
    """Two compiled functions on the same input tensor: each graph holds its own cast."""
    monkeypatch.setenv(ops.ENV_COMPILE_CAST, "shared")
    w = quantized_linear("mxfp8", "decoded_test", n=96)
    x = randn(80, 128, seed=7)
    with torch.no_grad():
        first = torch.compile(lambda x: F.linear(x, w), fullgraph=True, backend="aot_eager")(x)
        second = torch.compile(lambda x: F.linear(x, w) * 2, fullgraph=True, backend="aot_eager")(x)
    assert decoded_backend.calls["quantize_dequantize_mxfp8"] == 2
    assert torch.equal(first, F.linear(x, w)) and torch.equal(second, F.linear(x, w) * 2)


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
        assert decoded_backend.calls["mxfp8_mm_decoded"] == 2 and decoded_backend.calls["nvfp4_mm_decoded"] == 2
        activations = (h, x * scale, g, x.half() * scale.half())
        expected = [F.linear(a, linear.weight) for a, linear in zip(activations, (block.a, block.b, block.c, block.d))]
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
    assert with_gelu and all("BFloat16" in kernel for kernel in with_gelu)  # every GELU feeds the bf16 decode
    assert "mxfp8_mm_decoded" in code and "mxfp8_linear" not in code


# ---------------------------------------------------------------------------------------------- on the GPU

@pytest.mark.gpu
@pytest.mark.parametrize("fmt,options", [
    ("mxfp8", {}), ("mxfp8", {"scaling": "floor"}), ("nvfp4", {}), ("nvfp4", {"activation_amax": 3.0}),
])
def test_gpu_inductor_cast_equals_the_cast_kernels_and_the_linear_op(fmt, options, monkeypatch):
    """On a 9.0 GPU with cutlass: inductor's fused cast gives the Triton cast kernel's bits, and the
    compiled Linear the eager one's."""
    from dq_kernels.backends import triton_cast

    device = torch.device("cuda")
    if torch.cuda.get_device_capability() != (9, 0) or not backends.get_backend("cutlass").availability_on(device)[0]:
        pytest.skip("needs a 9.0 GPU and the cutlass backend built for it")
    monkeypatch.setenv(ops.ENV_COMPILE_CAST, "fused")
    try:
        torch._dynamo.reset()
        w = linear_module(quantized_linear(fmt, "cutlass", k=512, n=384, **options).cuda())
        x, scale = randn(4, 96, 512, seed=12).cuda(), randn(512, seed=13).cuda()
        x[0, 0, :64] *= 2.0**-30  # blocks far below the row's largest

        def cast(a):
            if fmt == "nvfp4":
                return formats.quantize_dequantize_nvfp4(a, w.weight.activation_scale)
            return (formats.quantize_dequantize_mxfp8(a, options.get("scaling", "rceil")),)

        with torch.no_grad():
            got_cast = torch.compile(lambda x, s: cast(F.gelu(x) * s), fullgraph=True)(x, scale)
            got = torch.compile(lambda x, s: w(F.gelu(x) * s), fullgraph=True)(x, scale)
            a = torch.compile(lambda x, s: F.gelu(x) * s, fullgraph=True)(x, scale)  # the activation, stored
            if fmt == "nvfp4":
                want_cast = triton_cast.quantize_dequantize_nvfp4(a, w.weight.activation_scale)
            else:
                want_cast = (triton_cast.quantize_dequantize_mxfp8(a, options.get("scaling", "rceil")),)
            want = F.linear(a, w.weight)
        for g, e in zip(got_cast, want_cast, strict=True):
            assert torch.equal(g.view(torch.int16) if g.dim() else g, e.view(torch.int16) if e.dim() else e)
        assert torch.equal(got, want)
    finally:
        torch._dynamo.reset()


@pytest.mark.gpu
@pytest.mark.parametrize("fmt", ["mxfp8", "nvfp4"])
def test_gpu_linears_reading_one_activation_share_one_cast_kernel(fmt, monkeypatch):
    """On a 9.0 GPU with cutlass, DQ_KERNELS_COMPILE_CAST=shared: q, k and v of one activation
    compiled by inductor run one cast kernel (one decoded cast op in the code) and give the eager
    Linears' bits."""
    from torch._inductor.utils import run_and_get_code

    device = torch.device("cuda")
    if torch.cuda.get_device_capability() != (9, 0) or not backends.get_backend("cutlass").availability_on(device)[0]:
        pytest.skip("needs a 9.0 GPU and the cutlass backend built for it")
    monkeypatch.setenv(ops.ENV_COMPILE_CAST, "shared")
    torch._dynamo.reset()
    try:
        qkv = [linear_module(quantized_linear(fmt, "cutlass", k=512, n=384, seed=seed).cuda()) for seed in (1, 2, 3)]
        norm = torch.nn.LayerNorm(512, elementwise_affine=False).cuda()

        def attention_inputs(x):
            h = norm(x)
            return h, *(linear(h) for linear in qkv)  # h: what the casts read, for the eager Linears

        x = randn(2, 128, 512, seed=14).cuda()
        with torch.no_grad():
            (h, *got), (code,) = run_and_get_code(torch.compile(attention_inputs, fullgraph=True), x)
            want = [linear(h) for linear in qkv]
        assert code.count(f"quantize_dequantize_{fmt}.default(") == 1
        assert code.count(f"{fmt}_mm_decoded.default(") == 3
        for g, w in zip(got, want, strict=True):
            assert torch.equal(g, w)
    finally:
        torch._dynamo.reset()
