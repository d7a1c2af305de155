"""The weight subclasses (dq_kernels.tensor) and the configs (dq_kernels.config): every implemented
op on the subclass directly, serialization, the error messages, set_backend and torch.compile."""

import io
import warnings

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from torchao.core.config import config_from_dict, config_to_dict
from torchao.prototype.safetensors.safetensors_support import flatten_tensor_state_dict, unflatten_tensor_state_dict
from torchao.quantization import quantize_

from dq_kernels import formats, ops
from dq_kernels.backends import use_backend
from dq_kernels.config import MXFP8Config, NVFP4Config, set_backend
from dq_kernels.tensor import MXFP8Weight, NVFP4Weight, QuantizedWeight

N, K = 160, 96  # N not a multiple of 128: the swizzled scales carry padding rows

WEIGHTS = {
    "mxfp8": lambda w, **kw: MXFP8Weight.from_float(w, **kw),
    "mxfp8-floor": lambda w, **kw: MXFP8Weight.from_float(w, scaling="floor", **kw),
    "nvfp4": lambda w, **kw: NVFP4Weight.from_float(w, **kw),
    "nvfp4-static": lambda w, **kw: NVFP4Weight.from_float(w, activation_amax=4.0, **kw),
    "nvfp4-w4a16": lambda w, **kw: NVFP4Weight.from_float(w, weight_only=True, **kw),
}
CONFIGS = {"mxfp8": MXFP8Config, "nvfp4": NVFP4Config}

# Relative L2 error of F.linear(x, quantized w) against the float32 product of the bf16 x and w,
# random normal data, K = 96. Measured: mxfp8 0.038, nvfp4 0.13-0.14 (seeds 0-2); bounds ~1.3x.
# W4A16 quantizes only the weight, so it sits below nvfp4.
LINEAR_ERROR_BOUND = {"mxfp8": 0.05, "mxfp8-floor": 0.05, "nvfp4": 0.18, "nvfp4-static": 0.18, "nvfp4-w4a16": 0.18}


def randn(*shape, seed=0, dtype=torch.bfloat16):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def same_bytes(a, b):
    """Equal dtype, shape and bytes (float8 has no torch.equal)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


def rel_err(out, ref):
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


@pytest.fixture(params=list(WEIGHTS))
def kind(request):
    return request.param


@pytest.fixture
def w():
    return randn(N, K)


@pytest.fixture
def qw(kind, w):
    return WEIGHTS[kind](w)


@pytest.fixture(autouse=True)
def no_grad():
    with torch.no_grad():
        yield


def expected_linear(qw, x2d, bias):
    """What F.linear must compute: the activation through the cast op, then the mm op."""
    if isinstance(qw, MXFP8Weight):
        a_q, a_s = ops.quantize_mxfp8(x2d, qw.scaling)
        return ops.mxfp8_mm(a_q, a_s, qw.qdata, qw.scale, bias, x2d.dtype)
    if qw.weight_only:
        return ops.nvfp4_weight_only_mm(x2d, qw.qdata, qw.scale, qw.tensor_scale, bias)
    a_q, a_s, a_ts = ops.quantize_nvfp4(x2d, qw.activation_scale)
    return ops.nvfp4_mm(a_q, a_s, a_ts, qw.qdata, qw.scale, qw.tensor_scale, bias, x2d.dtype)


# ---------------------------------------------------------------------------------------------- construction


def test_from_float_holds_the_canonical_operands(kind, w, qw):
    assert qw.shape == (N, K) and qw.dtype == torch.bfloat16 and qw.device == w.device
    assert isinstance(qw, QuantizedWeight) and not qw.transposed and qw.backend == "auto"
    if isinstance(qw, MXFP8Weight):
        q, s = formats.quantize_mxfp8(w, qw.scaling)
        assert torch.equal(qw.dequantize(), formats.dequantize_mxfp8(q, s, torch.bfloat16))
    else:
        q, s, ts = formats.quantize_nvfp4(w)
        assert torch.equal(qw.tensor_scale, ts)
        assert torch.equal(qw.dequantize(), formats.dequantize_nvfp4(q, s, ts, torch.bfloat16))
    assert same_bytes(qw.qdata, q) and same_bytes(qw.scale, s)
    assert qw.dequantize(torch.float32).dtype == torch.float32


def test_nvfp4_static_activation_scale_is_amax_over_2688():
    qw = NVFP4Weight.from_float(randn(N, K), activation_amax=4.0)
    assert qw.activation_scale.dtype == torch.float32 and qw.activation_scale.dim() == 0
    assert torch.equal(qw.activation_scale, formats.nvfp4_tensor_scale(torch.tensor(4.0)))
    assert NVFP4Weight.from_float(randn(N, K)).activation_scale is None


def weight_with_tiny_blocks(blocks: int) -> torch.Tensor:
    """[N, K] bf16 random normal data, with ``blocks`` 32-element blocks of row 5 holding values
    up to 1e-35 (about 2^-116: scale byte 2) and a block of row 7 all zero."""
    w = randn(N, K)
    w[5, : 32 * blocks] = torch.linspace(-1e-35, 1e-35, 32 * blocks)
    w[7, :32] = 0
    return w


def test_mxfp8_blocks_below_bf16_counts_nonzero_blocks_under_scale_byte_3():
    for blocks in (0, 1, 2):
        q, s = formats.quantize_mxfp8(weight_with_tiny_blocks(blocks))
        assert formats.mxfp8_blocks_below_bf16(q, s) == blocks  # the all-zero block is not counted


def test_an_mxfp8_weight_outside_the_kernels_exact_domain_runs_on_the_reference():
    w = weight_with_tiny_blocks(1)
    with pytest.warns(UserWarning, match=r"1 block\(s\) .* it runs on backend 'reference' at every M"):
        qw = MXFP8Weight.from_float(w)
    assert qw.backend == "reference"
    with pytest.warns(UserWarning, match="on backend 'decode_cublas' its result may depend on M"):
        assert MXFP8Weight.from_float(w, backend="decode_cublas").backend == "decode_cublas"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert MXFP8Weight.from_float(w, backend="reference").backend == "reference"
        assert MXFP8Weight.from_float(weight_with_tiny_blocks(0)).backend == "auto"
    x = randn(3, K, seed=2)
    q, s = formats.quantize_mxfp8(x)
    exact = formats.dequantize_mxfp8(q, s, torch.float32) @ qw.dequantize(torch.float32).t()
    assert torch.allclose(F.linear(x, qw).float(), exact.to(torch.bfloat16).float(), rtol=0, atol=0)


def test_repr_is_readable():
    w = randn(N, K)
    assert repr(MXFP8Weight.from_float(w)) == (
        "MXFP8Weight(shape=[160, 96], dtype=torch.bfloat16, device=cpu, scaling='rceil', backend='auto')"
    )
    assert repr(NVFP4Weight.from_float(w, backend="reference").t()) == (
        "NVFP4Weight(shape=[96, 160], dtype=torch.bfloat16, device=cpu, activation=dynamic, "
        "backend='reference', transposed=True)"
    )
    assert "activation=static tensor scale" in repr(NVFP4Weight.from_float(w, activation_amax=1.0))
    assert "weight-only" in repr(NVFP4Weight.from_float(w, weight_only=True))


# ---------------------------------------------------------------------------------------------- linear


@pytest.mark.parametrize("shape", [(K,), (7, K), (1, 5, K), (3, 5, K)], ids=["1d", "2d", "batch1", "batch3"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
def test_linear_quantizes_the_activation_and_runs_the_mm_op(kind, w, qw, shape, with_bias):
    x = randn(*shape, seed=1)
    bias = randn(N, seed=2) if with_bias else None
    out = F.linear(x, qw, bias)
    assert out.shape == (*shape[:-1], N) and out.dtype == x.dtype
    assert torch.equal(out, expected_linear(qw, x.reshape(-1, K), bias).reshape(out.shape))
    exact = F.linear(x.float(), w.float(), None if bias is None else bias.float())
    assert rel_err(out, exact) < LINEAR_ERROR_BOUND[kind]


def test_every_matmul_form_gives_the_linear_result(qw):
    x, bias = randn(7, K, seed=1), randn(N, seed=2)
    expected = F.linear(x, qw)
    assert torch.equal(x @ qw.t(), expected)
    assert torch.equal(torch.matmul(x, qw.t()), expected)
    assert torch.equal(torch.mm(x, qw.t()), expected)
    assert torch.equal(torch.ops.aten.mm.default(x, qw.t()), expected)
    assert torch.equal(torch.ops.aten.linear.default(x, qw), expected)
    assert torch.equal(torch.addmm(bias, x, qw.t()), F.linear(x, qw, bias))
    assert torch.equal(x @ qw.transpose(0, 1), expected)


def test_3d_matmul_folds_to_2d_whatever_the_strides(qw):
    # a [5, 3, K] view of a [3, 5, K] tensor cannot be folded into [15, K] without a copy; aten's
    # matmul would then expand the weight to [5, K, N] and call bmm
    x = randn(3, 5, K, seed=1).transpose(0, 1)
    expected = F.linear(x.contiguous(), qw)
    assert torch.equal(x @ qw.t(), expected)
    assert torch.equal(F.linear(x, qw), expected)
    # below torch functions (dispatch level), folding inputs still reach mm through linear's decomposition
    with torch._C.DisableTorchFunctionSubclass():
        assert torch.equal(F.linear(x.contiguous(), qw), expected)


def test_linear_errors(qw):
    with pytest.raises(ValueError, match=r"does not match the weight \[N=160, K=96\]"):
        F.linear(randn(4, K + 32), qw)
    with pytest.raises(ValueError, match="transposed"):
        F.linear(randn(4, N), qw.t())
    for wrong in (lambda: randn(4, N) @ qw, lambda: qw @ randn(K, 4)):
        with pytest.raises(NotImplementedError, match=r"x @ weight.t\(\)"):
            wrong()
    with pytest.raises(NotImplementedError, match="weight operand"):
        F.linear(qw, randn(4, K))
    with pytest.raises(NotImplementedError, match="beta = alpha = 1"):
        torch.addmm(randn(N), randn(4, K), qw.t(), beta=0.5)


def test_backend_is_passed_to_the_ops():
    w, x = randn(N, K), randn(7, K, seed=1)
    for make in (MXFP8Weight.from_float, NVFP4Weight.from_float):
        auto = F.linear(x, make(w))
        # on CPU, auto picks the reference backend
        assert torch.equal(F.linear(x, make(w, backend="reference")), auto)
        # "auto" is passed to the ops as None, so use_backend applies to it; a named backend wins
        on_torchao = F.linear(x, make(w, backend="torchao"))
        with use_backend("torchao"):
            assert torch.equal(F.linear(x, make(w)), on_torchao)
            assert torch.equal(F.linear(x, make(w, backend="reference")), auto)
        assert rel_err(on_torchao, auto) < 0.01


# ---------------------------------------------------------------------------------------------- aten ops


def test_t_and_transpose(qw):
    t = qw.t()
    assert type(t) is type(qw) and t.shape == (K, N) and t.transposed
    assert torch.equal(t.dequantize(), qw.dequantize().t())
    assert not t.t().transposed and t.t().shape == (N, K)
    assert qw.transpose(0, 1).transposed and qw.transpose(-1, -2).transposed
    assert not qw.transpose(1, 1).transposed


def test_view_and_reshape_to_the_same_shape(qw):
    for v in (qw.view(N, K), qw.view(-1, K), qw.reshape(N, -1)):
        assert type(v) is type(qw) and v.shape == (N, K)
        assert torch.equal(v.dequantize(), qw.dequantize())
    with pytest.raises(NotImplementedError, match="can only be viewed as the same shape"):
        qw.view(K, N)


def test_slice_rows_and_block_aligned_columns(qw):
    block = qw.fmt.block_size
    dense = qw.dequantize()
    for sliced, expected in [
        (qw[10:150], dense[10:150]),
        (qw.narrow(0, 3, 1), dense[3:4]),
        (qw[:, block : 3 * block], dense[:, block : 3 * block]),
    ]:
        assert type(sliced) is type(qw) and sliced.shape == expected.shape
        assert torch.equal(sliced.dequantize(), expected)
        assert sliced.scale.shape == qw.fmt.scale_shape(*expected.shape)
    with pytest.raises(ValueError, match="block boundaries"):
        qw[:, 8:40]
    with pytest.raises(NotImplementedError, match="step 1"):
        qw[::2]


def test_cat_rows_and_columns(qw):
    # slices of one weight share its tensor scale, so they concatenate back into it
    for joined in (torch.cat([qw[:64], qw[64:]]), torch.cat([qw[:, :64], qw[:, 64:]], dim=1)):
        assert type(joined) is type(qw) and repr(joined) == repr(qw)
        assert same_bytes(joined.qdata, qw.qdata) and same_bytes(joined.scale, qw.scale)


def test_cat_errors():
    w = randn(N, K)
    with pytest.raises(ValueError, match="equal attributes"):
        torch.cat([MXFP8Weight.from_float(w), MXFP8Weight.from_float(w, scaling="floor")])
    with pytest.raises(ValueError, match="weights of one class"):
        torch.cat([MXFP8Weight.from_float(w), NVFP4Weight.from_float(w)])
    with pytest.raises(ValueError, match="weights of one class"):
        torch.cat([w, MXFP8Weight.from_float(w)])
    with pytest.raises(ValueError, match="different tensor_scales; fuse the projections before quantizing"):
        torch.cat([NVFP4Weight.from_float(w), NVFP4Weight.from_float(2 * w)])


def test_detach_clone_alias_contiguous(qw):
    for copy_ in (qw.detach(), qw.clone(), torch.ops.aten.alias.default(qw), qw.contiguous()):
        assert type(copy_) is type(qw) and repr(copy_) == repr(qw)
        assert torch.equal(copy_.dequantize(), qw.dequantize())
    assert qw.detach().qdata.data_ptr() == qw.qdata.data_ptr()
    assert qw.clone().qdata.data_ptr() != qw.qdata.data_ptr()


def test_to_changes_device_and_presented_dtype_only(qw):
    half = qw.to(torch.float16)
    assert type(half) is type(qw) and half.dtype == torch.float16 and half.dequantize().dtype == torch.float16
    assert same_bytes(half.qdata, qw.qdata)
    assert qw.to("cpu").device.type == "cpu" and qw.to("cpu").dtype == torch.bfloat16
    with pytest.raises(TypeError, match="can present as bfloat16, float16 or float32"):
        qw.to(torch.float8_e4m3fn)
    # Module.to swaps the parameter for the converted weight
    linear = torch.nn.Linear(K, N, dtype=torch.bfloat16)
    linear.weight = torch.nn.Parameter(qw, requires_grad=False)
    linear.to(torch.float16)
    assert type(linear.weight) is type(qw) and linear.weight.dtype == torch.float16
    assert linear(randn(2, K, dtype=torch.float16)).dtype == torch.float16


def test_copy_(kind):
    make = WEIGHTS[kind]
    dst, src = make(randn(N, K)), make(randn(N, K, seed=5))
    dst.copy_(src)
    assert torch.equal(dst.dequantize(), src.dequantize())
    # into a plain tensor: the dequantized values (diffusers' fuse_projections does this)
    plain = torch.empty(N, K, dtype=torch.float32)
    plain.copy_(src)
    assert torch.equal(plain, src.dequantize().float())
    with pytest.raises(NotImplementedError, match="quantize the module instead"):
        dst.copy_(randn(N, K))
    with pytest.raises(ValueError, match="same class, shape and attributes"):
        dst.copy_(make(randn(N - 32, K)))


def test_unimplemented_op_names_itself(qw):
    with pytest.raises(NotImplementedError, match="aten.add"):
        qw + 1


# ---------------------------------------------------------------------------------------------- serialization


def model_of(kind, seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(K, N), torch.nn.GELU(), torch.nn.Linear(N, K)).bfloat16()
    for linear in (model[0], model[2]):
        linear.weight = torch.nn.Parameter(WEIGHTS[kind](linear.weight), requires_grad=False)
    return model


def test_state_dict_through_torch_load_weights_only(kind):
    model, x = model_of(kind), randn(3, 5, K, seed=1)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert type(state["0.weight"]) is type(model[0].weight)
    # into a quantized model (copy_) and into a plain one (assign)
    target = model_of(kind, seed=1)
    target.load_state_dict(state)
    assert torch.equal(target(x), model(x))
    plain = torch.nn.Sequential(torch.nn.Linear(K, N), torch.nn.GELU(), torch.nn.Linear(N, K)).bfloat16()
    plain.load_state_dict(state, assign=True)
    assert torch.equal(plain(x), model(x))


def test_safetensors_through_torchao_flattening(kind, tmp_path):
    model = model_of(kind)
    tensors, metadata = flatten_tensor_state_dict(model.state_dict())
    safetensors.torch.save_file(tensors, tmp_path / "w.safetensors", metadata=metadata)
    with safetensors.safe_open(tmp_path / "w.safetensors", framework="pt") as f:
        loaded = {name: f.get_tensor(name) for name in f.keys()}
        state, leftover = unflatten_tensor_state_dict(loaded, f.metadata())
    assert not leftover
    for name, value in model.state_dict().items():
        assert type(state[name]) is type(value) and repr(state[name]) == repr(value)
        if isinstance(value, QuantizedWeight):
            for inner in value.__tensor_flatten__()[0]:
                assert same_bytes(getattr(state[name], inner), getattr(value, inner))


# ---------------------------------------------------------------------------------------------- configs


@pytest.mark.parametrize("fmt,in_features,block", [("mxfp8", 80, 32), ("nvfp4", 40, 16)])
def test_handler_skips_unsupported_linears_with_a_message(fmt, in_features, block, caplog):
    layers = torch.nn.Linear(K, 64), torch.nn.Linear(64, in_features), torch.nn.Linear(in_features, K)
    model = torch.nn.Sequential(*layers).bfloat16()
    with caplog.at_level("WARNING", logger="dq_kernels"):
        quantize_(model, CONFIGS[fmt]())
    assert isinstance(model[0].weight, QuantizedWeight) and isinstance(model[1].weight, QuantizedWeight)
    assert type(model[2].weight) is torch.nn.Parameter
    assert f"in_features = {in_features} is not a multiple of {block} (the {fmt} block size)" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="dq_kernels"):
        quantize_(model, CONFIGS[fmt]())
    assert "it is already quantized" in caplog.text
    model(randn(2, K))


def test_handler_quantizes_as_configured():
    w = randn(N, K)
    for config, expected in [
        (MXFP8Config(scaling="floor", backend="reference"), MXFP8Weight.from_float(w, "floor", "reference")),
        (NVFP4Config(activation_amax=2.0), NVFP4Weight.from_float(w, activation_amax=2.0)),
        (NVFP4Config(weight_only=True, backend="torchao"), NVFP4Weight.from_float(w, "torchao", weight_only=True)),
    ]:
        linear = torch.nn.Linear(K, N, dtype=torch.bfloat16)
        linear.weight.data.copy_(w)
        quantize_(linear, config)
        assert repr(linear.weight) == repr(expected)
        assert torch.equal(linear.weight.dequantize(), expected.dequantize())
        assert not linear.weight.requires_grad


def test_config_validation():
    with pytest.raises(ValueError, match="unknown dq_kernels backend 'nope'"):
        MXFP8Config(backend="nope")
    with pytest.raises(ValueError, match="scaling must be one of"):
        MXFP8Config(scaling="round")
    with pytest.raises(ValueError, match="positive finite"):
        NVFP4Config(activation_amax=0.0)
    with pytest.raises(ValueError, match="no use with weight_only=True"):
        NVFP4Config(weight_only=True, activation_amax=1.0)


def test_configs_rebuild_from_their_dict():
    # what diffusers writes to config.json and reads back (through ALLOWED_AO_MODULES)
    for config in (MXFP8Config(backend="reference", scaling="floor"), NVFP4Config(activation_amax=3.0)):
        assert config_from_dict(config_to_dict(config)) == config


def test_set_backend_switches_without_requantizing():
    model, x = model_of("nvfp4"), randn(7, K, seed=1)
    before = model(x)
    qdata = model[0].weight.qdata
    assert set_backend(model, "torchao") == 2
    assert model[0].weight.backend == "torchao" and model[0].weight.qdata is qdata
    with use_backend("torchao"):
        assert torch.equal(model(x), model_of("nvfp4")(x))
    set_backend(model, "auto")
    assert torch.equal(model(x), before)
    with pytest.raises(ValueError, match="unknown dq_kernels backend"):
        set_backend(model, "nope")
    with pytest.raises(ValueError, match="no dq_kernels-quantized weights"):
        set_backend(torch.nn.Linear(4, 4), "reference")


# ---------------------------------------------------------------------------------------------- torch.compile


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("fmt", ["mxfp8", "nvfp4"])
def test_compile_fullgraph_matches_eager_and_follows_set_backend(fmt, fresh_dynamo):
    model = model_of(fmt)
    x = randn(3, 5, K, seed=1).transpose(0, 1)  # batch > 1, leading dims not foldable without a copy
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(x), model(x))
    set_backend(model, "torchao")  # the weights' attributes are guarded: this recompiles
    assert torch.equal(compiled(x), model(x))


@pytest.mark.parametrize("fmt", ["mxfp8", "nvfp4"])
def test_compile_inductor(fmt, fresh_dynamo):
    model = model_of(fmt)
    x = randn(3, 5, K, seed=1)
    out = torch.compile(model, fullgraph=True)(x)
    # the dq_kernels ops are opaque to inductor; only the bf16 GELU between them may be fused differently
    assert rel_err(out, model(x)) < 0.01


# ---------------------------------------------------------------------------------------------- review fixes


@pytest.fixture
def gemm_only_backend(monkeypatch):
    """A CPU test double that implements only the mm ops (as cutlass and triton_sm100 do)."""
    from dq_kernels import backends
    from dq_kernels.backends.base import BackendSpec
    from dq_kernels.backends.reference import ReferenceBackend

    class GemmOnly(ReferenceBackend):
        spec = BackendSpec(name="gemm_only", description="test double", ops=("mxfp8_mm", "nvfp4_mm"), cpu=True)

    monkeypatch.setattr(backends, "_REGISTRY", {"gemm_only": GemmOnly(), **backends._REGISTRY})
    return "gemm_only"


@pytest.mark.parametrize("cls", [MXFP8Weight, NVFP4Weight])
def test_weight_with_a_gemm_only_backend_quantizes_through_auto(cls, gemm_only_backend):
    w = randn(64, 128, dtype=torch.float32)
    x = randn(5, 128, seed=1, dtype=torch.float32)
    qw = cls.from_float(w, backend=gemm_only_backend)
    reference = cls.from_float(w, backend="reference")
    assert torch.equal(F.linear(x, qw), F.linear(x, reference))
    model = torch.nn.Sequential(torch.nn.Linear(128, 64, bias=False))
    quantize_(model, MXFP8Config(backend="reference"))
    set_backend(model, gemm_only_backend)
    assert model[0].weight.backend == gemm_only_backend
    model(x)


@pytest.mark.parametrize("cls", [MXFP8Weight, NVFP4Weight])
def test_linear_of_a_transposed_activation_and_of_an_empty_batch(cls):
    w = cls.from_float(randn(64, 128, dtype=torch.float32))
    x = randn(128, 7, seed=2, dtype=torch.float32).t()  # [7, 128], column-major
    assert torch.equal(F.linear(x, w), F.linear(x.contiguous(), w))
    bias = randn(64, seed=3, dtype=torch.float32)
    empty = F.linear(torch.empty(2, 0, 128), w, bias)
    assert empty.shape == (2, 0, 64)
