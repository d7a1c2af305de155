"""Backend registry: selection rules, explicit vs auto, availability reporting."""

import logging

import pytest
import torch

import dq_kernels as dq
from dq_kernels import backends
from dq_kernels.backends import BackendUnavailableError, select
from dq_kernels.backends.base import OPS, Backend, BackendSpec

CPU = torch.device("cpu")


def test_available_backends_lists_every_backend_with_a_reason():
    statuses = {s.name: s for s in dq.available_backends()}
    assert set(statuses) == set(backends.backend_names())
    for s in statuses.values():
        assert isinstance(s.available, bool) and s.reason
        assert set(s.formats) <= {"mxfp8", "nvfp4"}
    assert statuses["reference"].available


def test_auto_picks_reference_on_cpu():
    assert select("mxfp8_mm", CPU, 4, 8, 64).spec.name == "reference"
    assert select("quantize_nvfp4", CPU, 4, 64, 64).spec.name == "reference"


def test_explicit_unknown_backend_lists_known_names():
    with pytest.raises(ValueError, match=r"unknown dq_kernels backend 'nope'; known: .*reference"):
        select("mxfp8_mm", CPU, 4, 8, 64, "nope")


class CudaOnlyBackend(Backend):
    spec = BackendSpec(name="fake_cuda", description="test double", ops=("mxfp8_mm",), capabilities=((9, 0),), n_multiple=8)


@pytest.fixture
def fake_cuda_backend(monkeypatch):
    registry = {"fake_cuda": CudaOnlyBackend(), **backends._REGISTRY}
    monkeypatch.setattr(backends, "_REGISTRY", registry)
    return registry["fake_cuda"]


def test_explicit_choice_that_cannot_run_raises_naming_why(fake_cuda_backend):
    with pytest.raises(BackendUnavailableError, match=r"'fake_cuda' cannot run mxfp8_mm on cpu .*runs on CUDA devices only"):
        select("mxfp8_mm", CPU, 4, 8, 64, "fake_cuda")
    with pytest.raises(BackendUnavailableError, match=r"does not implement nvfp4_mm"):
        select("nvfp4_mm", CPU, 4, 8, 64, "fake_cuda")


def test_shape_limits_are_data():
    spec = CudaOnlyBackend.spec
    assert spec.shape_reason("mxfp8_mm", 4, 1000, 64) is None
    assert "multiple of 8" in spec.shape_reason("mxfp8_mm", 4, 1001, 64)
    assert spec.formats == ("mxfp8",)


def test_use_backend_and_env_apply_to_implemented_ops_only(fake_cuda_backend, monkeypatch):
    # quantize is not implemented by fake_cuda: it goes to auto instead of raising
    with dq.use_backend("fake_cuda"):
        assert select("quantize_mxfp8", CPU, 4, 64, 64).spec.name == "reference"
        with pytest.raises(BackendUnavailableError):
            select("mxfp8_mm", CPU, 4, 8, 64)
    monkeypatch.setenv("DQ_KERNELS_BACKEND", "torchao")
    assert select("mxfp8_mm", CPU, 4, 8, 64).spec.name == "torchao"
    with dq.use_backend("reference"):  # the context wins over the environment
        assert select("mxfp8_mm", CPU, 4, 8, 64).spec.name == "reference"
    assert select("mxfp8_mm", CPU, 4, 8, 64, "reference").spec.name == "reference"  # the argument wins


def test_use_backend_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown dq_kernels backend"):
        with dq.use_backend("nope"):
            pass


def test_auto_skips_comparison_backends(monkeypatch):
    monkeypatch.delenv("DQ_KERNELS_BACKEND", raising=False)
    assert not backends.get_backend("torchao").spec.auto
    assert select("nvfp4_mm", CPU, 4, 8, 64).spec.name == "reference"


class BrokenBackend(Backend):
    spec = BackendSpec(name="broken", description="test double", ops=OPS, cpu=True)

    def availability(self):
        return False, "its library is missing"


def test_auto_falls_back_and_logs_once(monkeypatch, caplog):
    monkeypatch.setattr(backends, "_REGISTRY", {"broken": BrokenBackend(), **backends._REGISTRY})
    monkeypatch.setattr(backends, "_LOGGED", set())
    with caplog.at_level(logging.WARNING, logger="dq_kernels"):
        for _ in range(3):
            assert select("mxfp8_mm", CPU, 4, 8, 64).spec.name == "reference"
    messages = [r.getMessage() for r in caplog.records if "broken" in r.getMessage()]
    assert messages == ["dq_kernels auto: skipping backend 'broken' for mxfp8_mm: its library is missing"]
    status = {s.name: s for s in dq.available_backends()}["broken"]
    assert not status.available and status.reason == "its library is missing"


def test_wrapper_backend_argument_reaches_the_op():
    a_q, a_s = dq.quantize_mxfp8(torch.randn(4, 64))
    with pytest.raises(ValueError, match="unknown dq_kernels backend 'nope'"):
        dq.mxfp8_mm(a_q, a_s, a_q, a_s, backend="nope")


CUDA = torch.device("cuda", 0)
GEMM_OPS = ("mxfp8_mm", "nvfp4_mm", "nvfp4_weight_only_mm")


@pytest.mark.parametrize("capability", [(8, 9), (9, 0), (10, 0), (10, 3), (12, 0), (12, 1)])
def test_auto_never_runs_the_reference_for_a_cuda_gemm(monkeypatch, capability):
    """On every GPU family auto has a faster correct path than the float32 reference (issue 20):
    our kernels, torchao's cuBLAS, or the weight decoded for cuBLAS (decode_cublas). Printed: the
    choice per (capability, op, M), the table of docs/backend-selection.md."""
    from kernel_checks import fake_capability

    fake_capability(monkeypatch, capability)
    for op in GEMM_OPS:
        choices = {m: select(op, CUDA, m, 3072, 3072).spec.name for m in (1, 16, 48, 77, 512, 4096)}
        print(f"{capability[0]}.{capability[1]} {op}: {choices}")
        assert "reference" not in choices.values()
    assert select("quantize_mxfp8", CUDA, 16, 3072, 3072).spec.name in ("cutlass", "triton_cast")


def test_auto_warns_once_when_a_cuda_gemm_must_run_the_reference(monkeypatch, caplog):
    from kernel_checks import fake_capability

    fake_capability(monkeypatch, (9, 0))
    monkeypatch.setattr(backends, "ranking", lambda *a: ("reference",))
    with caplog.at_level(logging.WARNING, logger="dq_kernels"):
        for _ in range(2):
            assert select("mxfp8_mm", CUDA, 4, 8, 64).spec.name == "reference"
            backends._SELECTED.clear()
    assert [r.getMessage() for r in caplog.records] == [
        "dq_kernels auto: mxfp8_mm: auto runs the float32 reference for a GEMM on this GPU: no faster backend can "
        "run it (the reasons above); expect it to be slow"
    ]


def test_cutlass_decoded_mms_refuse_off_hopper():
    """cutlass's GEMMs on a decoded activation are the sm_90 mixed-input kernel's: elsewhere they
    raise BackendUnavailableError naming the alternative, before any native call."""
    cutlass = backends.get_backend("cutlass")
    a = torch.zeros(4, 64, dtype=torch.bfloat16)
    b_q, b_s = dq.quantize_mxfp8(torch.zeros(8, 64), backend="reference")
    with pytest.raises(BackendUnavailableError, match="runs mxfp8_mm_decoded on sm_90 only.*backend='reference'"):
        cutlass.mxfp8_mm_decoded(a, b_q, b_s, None, torch.bfloat16)
    n_q, n_s, n_ts = dq.quantize_nvfp4(torch.zeros(8, 64), backend="reference")
    with pytest.raises(BackendUnavailableError, match="runs nvfp4_mm_decoded on sm_90 only"):
        cutlass.nvfp4_mm_decoded(a.half(), torch.ones(()), n_q, n_s, n_ts, None, torch.bfloat16)
