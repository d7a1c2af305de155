"""Your own backend (issue 24): register_backend / unregister_backend, every selection route, torch.compile,
the tools (bench gemm, selftest, info), plugins, output checks, and examples/own_backend.py."""

import importlib.metadata
import importlib.util
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torchao.quantization import quantize_

import dq_kernels as dq
from dq_kernels import backends, cli, plugins
from dq_kernels.backends.base import OPS
from dq_kernels.backends.reference import ReferenceBackend
from dq_kernels.bench import selftest

CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "own_backend.py"


class Toy(ReferenceBackend):
    """The reference under another name, counting its calls per op."""

    spec = dq.BackendSpec(name="toy", description="test double: the reference, counted", ops=OPS, cpu=True)

    def __init__(self):
        self.calls = dict.fromkeys(OPS, 0)

    def quantize_mxfp8(self, x, scaling):
        self.calls["quantize_mxfp8"] += 1
        return super().quantize_mxfp8(x, scaling)

    def mxfp8_mm(self, *args):
        self.calls["mxfp8_mm"] += 1
        return super().mxfp8_mm(*args)

    def nvfp4_mm(self, *args):
        self.calls["nvfp4_mm"] += 1
        return super().nvfp4_mm(*args)


@pytest.fixture
def registered():
    """register(backend, **options): registered for this test only."""
    names = []

    def register(backend, **options):
        names.append(backend.spec.name)
        return dq.register_backend(backend, **options)

    yield register
    for name in reversed(names):
        if name in backends.backend_names() and backends.get_backend(name) in backends.user_backends:
            dq.unregister_backend(name)


@pytest.fixture
def toy(registered):
    return registered(Toy())


def operands(m=4, n=8, k=64):
    a = dq.quantize_mxfp8(torch.randn(m, k, generator=torch.Generator().manual_seed(0)))
    b = dq.quantize_mxfp8(torch.randn(n, k, generator=torch.Generator().manual_seed(1)))
    return (*a, *b)


def test_register_and_unregister():
    toy = Toy()
    assert dq.register_backend(toy) is toy and "toy" in backends.backend_names()
    try:
        assert dq.get_backend("toy") is toy and toy.spec.auto is False  # auto defaults to False
        status = {s.name: s for s in dq.available_backends()}["toy"]
        assert status.available and status.ops == OPS
        assert backends.select("mxfp8_mm", CPU, 4, 8, 64).spec.name == "reference"  # auto does not rank it
    finally:
        assert dq.unregister_backend("toy") is toy
    assert "toy" not in backends.backend_names() and toy not in backends.user_backends
    with pytest.raises(ValueError, match="no backend is registered as 'toy'"):
        dq.unregister_backend("toy")
    with pytest.raises(ValueError, match="'reference' is a built-in backend"):
        dq.unregister_backend("reference")


@pytest.mark.parametrize("auto, expected", [(False, ("reference",)), (True, ("toy", "reference")),
                                            ("first", ("toy", "reference"))])
def test_auto_ranks_it_where_asked(registered, auto, expected):
    registered(Toy(), auto=auto)
    assert backends.ranking("mxfp8_mm", CPU, 4, 8, 64) == expected
    assert backends.select("mxfp8_mm", CPU, 4, 8, 64).spec.name == expected[0]


def test_auto_first_goes_before_the_built_in_ranking(registered, monkeypatch):
    registered(Toy(), auto="first")
    monkeypatch.setattr(backends.base, "capability", lambda device: (9, 0))
    ranked = backends.ranking("mxfp8_mm", torch.device("cuda", 0), 4096, 3072, 3072)
    assert ranked[0] == "toy" and ranked[-1] == "reference" and "cutlass" in ranked


def test_every_selection_route_reaches_it(toy, monkeypatch):
    args = operands()
    dq.mxfp8_mm(*args, backend="toy")
    with dq.use_backend("toy"):
        dq.mxfp8_mm(*args)
    monkeypatch.setenv("DQ_KERNELS_BACKEND", "toy")
    dq.mxfp8_mm(*args)
    monkeypatch.delenv("DQ_KERNELS_BACKEND")
    assert toy.calls["mxfp8_mm"] == 3
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Linear(32, 32))
    quantize_(model, dq.MXFP8Config(backend="toy"))  # the config
    x = torch.randn(3, 64)
    model(x)
    assert toy.calls["mxfp8_mm"] == 5 and toy.calls["quantize_mxfp8"] >= 2
    nvfp4 = torch.nn.Sequential(torch.nn.Linear(64, 32))
    quantize_(nvfp4, dq.NVFP4Config(backend="reference"))
    assert dq.set_backend(nvfp4, "toy") == 1  # a quantized model's set_backend
    reference_out = F.linear(x, nvfp4[0].weight._replace(backend="reference"), nvfp4[0].bias)
    assert torch.equal(nvfp4(x), reference_out) and toy.calls["nvfp4_mm"] == 1


def test_environment_is_checked_against_the_registry_at_each_change(registered, monkeypatch):
    monkeypatch.setenv("DQ_KERNELS_BACKEND", "toy")
    with pytest.raises(ValueError, match="DQ_KERNELS_BACKEND='toy'"):
        backends.env_backend()
    registered(Toy())
    assert backends.env_backend() == "toy"
    dq.unregister_backend("toy")
    with pytest.raises(ValueError, match="DQ_KERNELS_BACKEND='toy'"):
        backends.env_backend()


def test_a_weight_whose_backend_is_not_registered_here_runs_on_auto(toy, caplog):
    model = torch.nn.Sequential(torch.nn.Linear(64, 32))
    quantize_(model, dq.MXFP8Config(backend="toy"))
    dq.unregister_backend("toy")  # as when a checkpoint is loaded without its plugin
    x = torch.randn(2, 64)
    with caplog.at_level(logging.WARNING, logger="dq_kernels"):
        out = model(x)
    assert torch.equal(out, F.linear(x, model[0].weight._replace(backend="reference"), model[0].bias))
    messages = [r.getMessage() for r in caplog.records]
    assert any("'toy'" in m and "no backend of this name is registered" in m for m in messages)


def test_compiled_fullgraph_dispatches_to_it_at_run_time(toy):
    torch._dynamo.reset()
    try:
        compiled = torch.compile(lambda *a: dq.mxfp8_mm(*a), fullgraph=True, backend="aot_eager")
        args = operands()
        expected = dq.mxfp8_mm(*args, backend="reference")
        assert torch.equal(compiled(*args), expected) and toy.calls["mxfp8_mm"] == 0
        with dq.use_backend("toy"):  # chosen when the op runs, not when it was traced
            assert torch.equal(compiled(*args), expected)
        assert toy.calls["mxfp8_mm"] == 1
        model = torch.nn.Sequential(torch.nn.Linear(64, 32))
        quantize_(model, dq.MXFP8Config(backend="toy"))
        x = torch.randn(3, 64)
        with torch.no_grad():
            assert torch.equal(torch.compile(model, fullgraph=True, backend="aot_eager")(x), model(x))
        assert toy.calls["mxfp8_mm"] == 3
    finally:
        torch._dynamo.reset()


class NoMethods(dq.Backend):
    spec = dq.BackendSpec(name="no_methods", description="", ops=("mxfp8_mm",), cpu=True)


def spec_of(**changes):
    import dataclasses

    return dataclasses.replace(Toy.spec, **changes)


@pytest.mark.parametrize("make, error, message", [
    (lambda: Toy, TypeError, r"pass an instance, Toy\(\), not the class"),
    (lambda: object(), TypeError, "must be an instance of a dq_kernels.Backend subclass"),
    (lambda: type("T", (Toy,), {"__eq__": lambda self, other: True})(), TypeError, "T must be hashable"),
    (lambda: type("T", (Toy,), {"spec": "toy"})(), TypeError, r"T.spec must be a dq_kernels.BackendSpec"),
    (lambda: type("T", (Toy,), {"spec": spec_of(name="auto")})(), ValueError, "'auto' cannot be used: the name of"),
    (lambda: type("T", (Toy,), {"spec": spec_of(name="")})(), ValueError, "'' cannot be used: an empty name"),
    (lambda: type("T", (Toy,), {"spec": spec_of(ops=("mxfp8_gemm",))})(), ValueError, r"unknown ops \['mxfp8_gemm'\]"),
    (lambda: NoMethods(), ValueError, r"lists \['mxfp8_mm'\] but NoMethods does not implement it"),
    (lambda: type("T", (Toy,), {"spec": spec_of(name="reference")})(), ValueError,
     "'reference' is a built-in backend; pass replace=True"),
])  # fmt: skip
def test_bad_backends_are_refused_naming_why(make, error, message):
    with pytest.raises(error, match=message):
        dq.register_backend(make())


def test_name_clash_and_bad_auto(toy):
    with pytest.raises(ValueError, match="'toy' is already registered; pass replace=True"):
        dq.register_backend(Toy())
    with pytest.raises(ValueError, match="auto must be False, True or 'first', got 'sometimes'"):
        dq.register_backend(Toy(), replace=True, auto="sometimes")
    again = dq.register_backend(Toy(), replace=True)
    assert dq.get_backend("toy") is again and toy not in backends.user_backends


def test_replacing_a_built_in_and_bringing_it_back(registered):
    original = dq.get_backend("reference")
    mine = registered(type("MyReference", (Toy,), {"spec": spec_of(name="reference")})(), replace=True)
    assert dq.mxfp8_mm(*operands()).shape == (4, 8) and mine.calls["mxfp8_mm"] == 1  # auto runs it in its place
    dq.unregister_backend("reference")
    assert dq.get_backend("reference") is original


class WrongOutput(Toy):
    spec = spec_of(name="wrong")
    shape_of = staticmethod(lambda m, n: (m, n))
    dtype = None

    def mxfp8_mm(self, a_q, a_s, b_q, b_s, bias, out_dtype):
        out = super().mxfp8_mm(a_q, a_s, b_q, b_s, bias, out_dtype)
        if getattr(self, "strided", False):  # the right shape and dtype, not row-major
            return out.new_zeros(out.shape[::-1], dtype=out.dtype).t()
        return out.new_zeros(self.shape_of(*out.shape), dtype=self.dtype or out.dtype)


@pytest.mark.parametrize("fault, expected", [
    ({"shape_of": staticmethod(lambda m, n: (n, m))},
     r"expected contiguous torch.bfloat16 \[4, 8\] on cpu, got torch.bfloat16 \[8, 4\]"),
    ({"dtype": torch.float16}, r"expected contiguous torch.bfloat16 \[4, 8\] on cpu, got torch.float16 \[4, 8\] on cpu"),
    ({"shape_of": staticmethod(lambda m, n: (m, n)), "strided": True},
     r"expected contiguous torch.bfloat16 \[4, 8\] on cpu, got torch.bfloat16 \[4, 8\] on cpu"),
])  # fmt: skip
def test_a_wrong_result_raises_naming_the_backend_and_op(registered, fault, expected):
    registered(type("Faulty", (WrongOutput,), fault)())
    with pytest.raises(RuntimeError, match="backend 'wrong' returned a wrong result from mxfp8_mm: " + expected):
        dq.mxfp8_mm(*operands(), backend="wrong")
    weight = dq.MXFP8Weight.from_float(torch.randn(8, 64), backend="wrong")  # the eager Linear path
    with pytest.raises(RuntimeError, match="backend 'wrong' returned a wrong result from mxfp8_mm"):
        F.linear(torch.randn(4, 64, dtype=torch.bfloat16), weight.to(torch.bfloat16))


TINY_GRID = selftest.Grid(ms=(1, 33), ns=(72,), ks=(96,), variants=((True, torch.bfloat16),))


def test_bench_gemm_and_selftest_rows(toy, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    path = tmp_path / "gemm.json"
    argv = ["bench", "gemm", "--formats", "mxfp8", "nvfp4", "--backends", "toy", "--shape", "16x64x32",
            "--json", str(path)]
    assert cli.main(argv) == 0
    rows = json.loads(path.read_text())["rows"]
    assert {(r["format"], r["op"], r["backend"]) for r in rows} == {
        (f, op, "toy") for f in ("mxfp8", "nvfp4") for op in ("mm", "linear")}
    assert all(r["rel_err"] < 2e-3 for r in rows)
    monkeypatch.setattr(selftest, "QUICK_GRID", TINY_GRID)
    path = tmp_path / "selftest.json"
    assert cli.main(["selftest", "--backends", "toy", "--json", str(path)]) == 0
    cases = json.loads(path.read_text())["cases"]
    assert {c["backend"] for c in cases} == {"toy"} and {c["status"] for c in cases} == {"pass"}
    assert {c["op"] for c in cases} == set(OPS)


def test_bench_model_takes_a_registered_name(toy):
    args = cli.build_parser().parse_args(["bench", "model", "flux", "--tiny", "--backends", "toy", "auto"])
    assert args.backends == ["toy", "auto"]


PLUGIN = """
import dq_kernels as dq
from dq_kernels.backends.reference import ReferenceBackend

class Plugged(ReferenceBackend):
    spec = dq.BackendSpec(name="{name}", description="a plugin's backend", ops=("mxfp8_mm",), cpu=True)

    def mxfp8_mm(self, *args):
        return super().mxfp8_mm(*args)

def register():
    dq.register_backend(Plugged())
{at_import}
"""


@pytest.fixture
def plugin_module(tmp_path, monkeypatch):
    """plugin_module(module, backend, at_import): a module on sys.path registering backend ``backend``
    when imported (at_import) or when its ``register`` is called; unregistered afterwards."""
    made = []

    def make(module, name, at_import=True):
        (tmp_path / f"{module}.py").write_text(PLUGIN.format(name=name, at_import="register()" if at_import else ""))
        made.append((module, name))

    monkeypatch.syspath_prepend(str(tmp_path))
    yield make
    for module, name in made:
        sys.modules.pop(module, None)
        if name in backends.backend_names():
            dq.unregister_backend(name)


def test_plugin_named_on_the_command_line(plugin_module, capsys):
    plugin_module("h5_cli_plugin", "plugged")
    assert cli.main(["--plugin", "h5_cli_plugin", "info"]) == 0
    assert "registered (plugins): plugged (never chosen by auto)" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--plugin", "h5_no_such_plugin", "info"])
    assert exit_info.value.code == 2
    assert "dq_kernels plugin 'h5_no_such_plugin' failed to import: ModuleNotFoundError" in capsys.readouterr().err


def test_plugins_of_the_entry_point_group(plugin_module, monkeypatch, capsys):
    plugin_module("h5_ep_plugin", "from_entry_point", at_import=False)
    group = [importlib.metadata.EntryPoint("mine", "h5_ep_plugin:register", plugins.ENTRY_POINT_GROUP)]
    monkeypatch.setattr(plugins.importlib.metadata, "entry_points",
                        lambda group=None: [ep for ep in entries if ep.group == group])
    monkeypatch.setattr(plugins, "_LOADED", set())
    entries = group
    assert dq.load_plugins() == ["mine"] and dq.load_plugins() == []  # once per process
    assert "from_entry_point" in backends.backend_names()
    assert cli.main(["bench", "gemm", "--formats", "mxfp8", "--ops", "mm", "--backends", "from_entry_point",
                     "--shape", "16x64x32"]) == 0  # the CLI loads them before parsing --backends
    entries = [importlib.metadata.EntryPoint("broken", "h5_no_such_module:register", plugins.ENTRY_POINT_GROUP)]
    with pytest.raises(dq.PluginError, match=r"plugin 'broken' \(h5_no_such_module:register, entry point group"):
        dq.load_plugins()
    assert cli.main(["info"]) == 2 and "plugin 'broken'" in capsys.readouterr().err


def test_example_runs_on_the_cpu():
    """examples/own_backend.py as written, through Triton's interpreter (about 15 s of CPU)."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, str(EXAMPLE)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "selftest: passed" in done.stdout and "own_backend: tiny FLUX ok" in done.stdout
    assert "naive_triton" in done.stdout  # its bench gemm rows


@pytest.mark.gpu
def test_example_kernel_on_cuda_matches_the_reference():
    spec = importlib.util.spec_from_file_location("own_backend_example", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    backend = example.NaiveTritonMXFP8()
    gen = torch.Generator(device="cuda").manual_seed(0)
    for m, n, k in ((1, 136, 160), (77, 1000, 3072), (300, 3072, 4160)):
        a = dq.quantize_mxfp8(torch.randn(m, k, device="cuda", generator=gen))
        b = dq.quantize_mxfp8(torch.randn(n, k, device="cuda", generator=gen))
        bias = torch.randn(n, device="cuda", generator=gen, dtype=torch.bfloat16)
        for out_dtype in (torch.float32, torch.bfloat16):
            out = backend.mxfp8_mm(*a, *b, bias, out_dtype)
            ref = dq.mxfp8_mm(*a, *b, bias, torch.float32, backend="reference")
            error = ((out.double() - ref.double()).abs().max() / ref.double().abs().max()).item()
            assert out.dtype == out_dtype and error <= selftest.tolerance(out_dtype, k), (m, n, k, out_dtype, error)
