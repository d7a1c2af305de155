"""The eager host path of a quantized Linear (issue 19): one cached backend decision per shape that
every way of naming a backend invalidates, the eager bypass of the custom-op dispatcher (same result
as the op), checks once, the bias converted once, a saved weight's backend as a preference, the
native library's ABI check, and the host benchmark."""

import json
import logging

import pytest
import torch
import torch.nn.functional as F
from torchao.quantization import quantize_

import dq_kernels as dq
from dq_kernels import backends, native, ops
from dq_kernels.backends import select
from dq_kernels.backends.base import OPS, BackendSpec
from dq_kernels.backends.reference import ReferenceBackend
from dq_kernels.config import MXFP8Config, NVFP4Config, set_backend
from dq_kernels.tensor import MXFP8Weight, NVFP4Weight

CPU = torch.device("cpu")


def randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


class Recorder(ReferenceBackend):
    """The reference, under another name, counting its GEMM calls."""

    spec = BackendSpec(name="recorder", description="test double", ops=OPS, cpu=True, auto=False)

    def __init__(self):
        self.calls = 0

    def mxfp8_mm(self, *args):
        self.calls += 1
        return super().mxfp8_mm(*args)


@pytest.fixture
def recorder(monkeypatch):
    backend = Recorder()
    monkeypatch.setattr(backends, "_REGISTRY", {**backends._REGISTRY, "recorder": backend})
    backends._forget_selections()
    return backend


def test_selection_is_cached_per_shape_and_name(recorder, monkeypatch):
    calls = []
    decide = backends._decide
    monkeypatch.setattr(backends, "_decide", lambda *a: calls.append(a) or decide(*a))
    for _ in range(3):
        assert select("mxfp8_mm", CPU, 4, 8, 64).spec.name == "reference"
    assert len(calls) == 1
    select("mxfp8_mm", CPU, 5, 8, 64)  # a new M
    assert len(calls) == 2
    with dq.use_backend("recorder"):  # use_backend is part of the key
        assert select("mxfp8_mm", CPU, 4, 8, 64).spec.name == "recorder"
    assert select("mxfp8_mm", CPU, 4, 8, 64).spec.name == "reference"
    monkeypatch.setenv("DQ_KERNELS_BACKEND", "recorder")  # so is the environment variable, read per call
    assert select("mxfp8_mm", CPU, 4, 8, 64).spec.name == "recorder"
    monkeypatch.setenv("DQ_KERNELS_BACKEND", "auto")
    assert select("mxfp8_mm", CPU, 4, 8, 64).spec.name == "reference"
    before = len(calls)
    select("mxfp8_mm", CPU, 2048, 8, 64), select("mxfp8_mm", CPU, 1500, 8, 64)
    assert len(calls) == before + 2  # every M decides once: a backend's limits may depend on M


def test_model_follows_set_backend_use_backend_and_the_environment(recorder, monkeypatch):
    model = torch.nn.Sequential(torch.nn.Linear(64, 32))
    quantize_(model, MXFP8Config())
    x = randn(3, 64)
    model(x)
    assert recorder.calls == 0
    with dq.use_backend("recorder"):
        model(x)
    assert recorder.calls == 1
    monkeypatch.setenv("DQ_KERNELS_BACKEND", "recorder")
    model(x)
    assert recorder.calls == 2
    monkeypatch.delenv("DQ_KERNELS_BACKEND")
    model(x)
    assert recorder.calls == 2
    set_backend(model, "recorder")
    model(x)
    assert recorder.calls == 3
    set_backend(model, "auto")
    model(x)
    assert recorder.calls == 3


def test_bad_environment_value_names_the_variable(monkeypatch):
    monkeypatch.setenv("DQ_KERNELS_BACKEND", "bogus")
    with pytest.raises(ValueError, match=r"environment variable DQ_KERNELS_BACKEND='bogus': unknown dq_kernels backend"):
        dq.mxfp8_mm(*dq.quantize_mxfp8(randn(4, 64), backend="reference"), *dq.quantize_mxfp8(randn(8, 64), backend="reference"))


@pytest.mark.parametrize("fmt", ["mxfp8", "nvfp4", "nvfp4_w4a16"])
def test_eager_bypass_matches_the_custom_op_and_skips_it(fmt, monkeypatch):
    w = randn(48, 64)
    weight = MXFP8Weight.from_float(w) if fmt == "mxfp8" else NVFP4Weight.from_float(w, weight_only=fmt != "nvfp4")
    x, bias = randn(5, 64, seed=1, dtype=torch.bfloat16), randn(48, seed=2, dtype=torch.bfloat16)
    through_op = weight._linear_op(x, bias)
    for name in ("mxfp8_linear", "nvfp4_linear", "nvfp4_weight_only_mm"):
        monkeypatch.setattr(ops, name, lambda *a, **k: pytest.fail("the eager path called the custom op"))
    assert torch.equal(F.linear(x, weight, bias), through_op)


def test_eager_launchers_are_kept_per_weight_m_bias_and_backend_names(recorder, monkeypatch):
    """An eager layer makes its launcher (ops.linear_launcher) once per (M, dtype, device, bias,
    weight backend, backend names in effect) and runs the kept one after that; every way of naming
    a backend, a new M, a new bias and swapped contents make a new one; the kept launchers never
    hold a weight's memory."""
    from dq_kernels import tensor

    made = []

    def counting_launcher(fmt, x, *args, **kwargs):
        made.append(x.shape[0])
        mark = float(len(made))
        return lambda x: torch.full((x.shape[0], 32), mark)  # which launcher ran

    monkeypatch.setattr(ops, "linear_launcher", counting_launcher)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32))
    quantize_(model, MXFP8Config())
    x = randn(3, 64)
    with torch.no_grad():  # the bias is a Parameter: a call autograd would record takes the custom op
        assert model(x)[0, 0] == 1 and model(x)[0, 0] == 1 and len(made) == 1
        assert model(randn(4, 64))[0, 0] == 2 and model(x)[0, 0] == 1  # a new M, then the kept one
        model[0].bias = torch.nn.Parameter(randn(32))
        assert model(x)[0, 0] == 3
        with dq.use_backend("recorder"):
            assert model(x)[0, 0] == 4
        monkeypatch.setenv("DQ_KERNELS_BACKEND", "recorder")  # the same name in effect as use_backend's
        assert model(x)[0, 0] == 4
        monkeypatch.delenv("DQ_KERNELS_BACKEND")
        assert model(x)[0, 0] == 3
        set_backend(model, "recorder")
        assert model(x)[0, 0] == 5
        set_backend(model, "auto")
        assert model(x)[0, 0] == 3
        backends._forget_selections()  # what register_backend / unregister_backend do
        assert model(x)[0, 0] == 6
        other = torch.nn.Linear(64, 32)
        quantize_(other, MXFP8Config())
        old_key = id(model[0].weight.qdata)
        torch.utils.swap_tensors(model[0].weight, other.weight)  # what nn.Module.to does with wrapper subclasses
        assert model(x)[0, 0] == 7 and len(tensor._LAUNCHERS[id(model[0].weight.qdata)][1]) == 1
        model[0].bias.data = randn(32, seed=5)  # the same Parameter, new memory: the launchers bind its address
        assert model(x)[0, 0] == 8
        for _ in range(2):  # x @ w.t() untransposes into a temporary weight each call: it shares the entries
            assert (x @ model[0].weight.t())[0, 0] == 9 and len(made) == 9
    del other  # it holds the swapped-out qdata: its entries go with it
    assert old_key not in tensor._LAUNCHERS
    key = id(model[0].weight.qdata)
    del model
    assert key not in tensor._LAUNCHERS  # nothing kept holds a freed weight's memory


def test_cutlass_keeps_no_launcher_for_a_bias_it_would_copy(monkeypatch):
    """A bias the kernels cannot read as it is (not 16-byte aligned, not contiguous): no launcher
    (a kept copy would miss the bias's later updates); the per-call methods copy it each call."""
    from dq_kernels.backends import cutlass

    monkeypatch.setattr(cutlass, "_on_hopper", lambda device: True)
    monkeypatch.setattr(cutlass.native, "sm90_linear_launcher", lambda *args, **kwargs: lambda x, out: None)
    b_q, b_s = torch.zeros(32, 64, dtype=torch.float8_e4m3fn), torch.zeros(128, 4, dtype=torch.uint8)
    backend, cpu = cutlass.CutlassBackend(), torch.device("cpu")
    for bias in (torch.zeros(33)[1:], torch.zeros(32, 2)[:, 0]):
        assert backend.linear_launcher("mxfp8", cpu, 3, torch.bfloat16, b_q, b_s, bias) is None
    assert backend.linear_launcher("mxfp8", cpu, 3, torch.bfloat16, b_q, b_s, torch.zeros(32)) is not None


def test_tracing_runs_the_custom_op(monkeypatch):
    model = torch.nn.Sequential(torch.nn.Linear(64, 32))
    quantize_(model, MXFP8Config())
    x = randn(3, 64)
    traced = []
    op = ops.mxfp8_linear
    monkeypatch.setattr(ops, "mxfp8_linear", lambda *a: traced.append(type(a[0]).__name__) or op(*a))
    with torch.no_grad():
        eager = model(x)
        assert traced == []
        compiled = torch.compile(model, backend="aot_eager", fullgraph=True)(x)
    assert "FakeTensor" in traced  # the custom op is what the trace recorded
    assert torch.equal(compiled, eager)


def test_weight_is_checked_when_made_and_the_call_checks_the_activation():
    w = MXFP8Weight.from_float(randn(48, 64))
    with pytest.raises(ValueError, match="scale must hold"):
        MXFP8Weight(w.qdata, w.scale[:64], w.orig_dtype, "rceil", "auto")
    with pytest.raises(TypeError, match="x must be bfloat16, float16 or float32"):
        F.linear(randn(2, 64).to(torch.float64), w)
    for weight in (w, NVFP4Weight.from_float(randn(48, 64)), NVFP4Weight.from_float(randn(48, 64), weight_only=True)):
        with pytest.raises(ValueError, match="bias must be"):
            F.linear(randn(2, 64), weight, randn(47))
        with pytest.raises(ValueError, match="bias must be"):
            F.linear(randn(2, 64), weight, randn(48).to(torch.int32))


class UpTo100Rows(ReferenceBackend):
    spec = BackendSpec(name="up_to_100", description="test double", ops=OPS, cpu=True, auto=False)

    def shape_limit(self, op, device, m, n, k):
        return None if m <= 100 else f"takes M <= 100, got M = {m}"


def test_a_limit_on_m_is_asked_for_every_m(monkeypatch):
    monkeypatch.setattr(backends, "_REGISTRY", {**backends._REGISTRY, "up_to_100": UpTo100Rows()})
    assert select("mxfp8_mm", CPU, 100, 8, 64, "up_to_100").spec.name == "up_to_100"
    with pytest.raises(dq.BackendUnavailableError, match="takes M <= 100"):
        select("mxfp8_mm", CPU, 101, 8, 64, "up_to_100")


def test_a_preference_that_cannot_run_falls_back_to_use_backend_in_both_paths(recorder, monkeypatch):
    """A weight's backend that cannot run hands over to use_backend / the environment, then auto, in
    the eager path (select with the preference) as in the traced one (the op gets None)."""
    from dq_kernels.tensor import _op_backend

    monkeypatch.setattr(Recorder, "availability", lambda self: (False, "gone"))
    backends._forget_selections()
    assert select("mxfp8_mm", CPU, 3, 32, 64, None, "recorder").spec.name == "reference"
    assert _op_backend("recorder", "mxfp8_mm", CPU, 3, 32, 64) is None
    with dq.use_backend("torchao"):
        assert select("mxfp8_mm", CPU, 3, 32, 64, None, "recorder").spec.name == "torchao"
        assert select("mxfp8_mm", CPU, 3, 32, 64, None).spec.name == "torchao"  # what the op then selects


def test_calls_autograd_would_record_take_the_custom_op(monkeypatch):
    weight = MXFP8Weight.from_float(randn(48, 64))
    traced = []
    op = ops.mxfp8_linear
    monkeypatch.setattr(ops, "mxfp8_linear", lambda *a: traced.append(True) or op(*a))
    F.linear(randn(5, 64).requires_grad_(), weight)
    assert traced == [True]
    with torch.no_grad():
        F.linear(randn(5, 64).requires_grad_(), weight)
    assert traced == [True]


def test_dynamic_shapes_with_a_named_backend():
    model = torch.nn.Sequential(torch.nn.Linear(64, 32))
    quantize_(model, MXFP8Config(backend="reference"))
    compiled = torch.compile(model, backend="aot_eager", dynamic=True, fullgraph=True)
    with torch.no_grad():
        for m in (3, 5):
            x = randn(m, 64, seed=m)
            assert torch.equal(compiled(x), model(x))


class Unavailable(ReferenceBackend):
    spec = BackendSpec(name="elsewhere", description="a backend of another machine", ops=OPS, cpu=True, auto=False)

    def availability(self):
        return False, "its library was built for another GPU"


def test_saved_backend_is_a_preference(monkeypatch, caplog):
    available = Unavailable()
    available.availability = lambda: (True, "")
    monkeypatch.setattr(backends, "_REGISTRY", {**backends._REGISTRY, "elsewhere": available})
    model = torch.nn.Sequential(torch.nn.Linear(64, 32))
    quantize_(model, NVFP4Config(backend="reference"))
    set_backend(model, "elsewhere")
    state = {k: v for k, v in model.state_dict().items()}
    monkeypatch.setattr(backends, "_REGISTRY", {**backends._REGISTRY, "elsewhere": Unavailable()})
    backends._forget_selections()
    loaded = torch.nn.Sequential(torch.nn.Linear(64, 32))
    loaded.load_state_dict(state, assign=True)
    assert loaded[0].weight.backend == "elsewhere"
    x = randn(3, 64)
    with caplog.at_level(logging.WARNING, logger="dq_kernels"):
        out = [loaded(x) for _ in range(3)]
    warnings = [r.getMessage() for r in caplog.records if "elsewhere" in r.getMessage()]
    assert len(warnings) == 2 and all("preference" in w for w in warnings)  # the cast and the mm, once each
    on_reference = loaded[0].weight._replace(backend="reference")
    assert all(torch.equal(o, F.linear(x, on_reference, loaded[0].bias)) for o in out)
    with pytest.raises(dq.BackendUnavailableError, match="built for another GPU"):
        set_backend(loaded, "elsewhere")  # an explicit choice stays strict


def test_native_library_with_another_abi_is_refused(monkeypatch):
    if not native.LIBRARY_PATH.is_file():
        pytest.skip("the native library is not built (no nvcc at install time)")
    monkeypatch.setattr(native, "ABI_VERSION", native.ABI_VERSION + 1)
    native._reset()
    try:
        ok, why = native.status()
        assert not ok and "stale build" in why and f"version {native.ABI_VERSION - 1}" in why
    finally:
        monkeypatch.undo()
        native._reset()
    assert native.status()[0]


def test_host_benchmark(tmp_path, capsys):
    """The host benchmark's rows, on the CPU (the reference) or on the GPU (auto's backend there)."""
    from dq_kernels import cli

    path = tmp_path / "host.json"
    assert cli.main(["bench", "host", "--shape", "4x64x32", "--formats", "bf16", "mxfp8", "--json", str(path)]) == 0
    rows = json.loads(path.read_text())["rows"]
    assert [(r["format"], r["M"], r["K"], r["N"]) for r in rows] == [("bf16", 4, 64, 32), ("mxfp8", 4, 64, 32)]
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    assert all(r["host_us"] > 0 for r in rows)
    assert rows[1]["backend"] == backends.select("mxfp8_mm", device, 4, 32, 64).spec.name


def test_cli_refuses_a_bad_environment_value_without_a_traceback(monkeypatch, capsys):
    from dq_kernels import cli

    monkeypatch.setenv("DQ_KERNELS_BACKEND", "bogus")
    assert cli.main(["bench", "gemm", "--shape", "4x64x32", "--formats", "mxfp8"]) == 2
    err = capsys.readouterr().err
    assert "DQ_KERNELS_BACKEND='bogus'" in err and "Traceback" not in err
