"""``dq-kernels selftest`` (dq_kernels/bench/selftest.py): on the CPU a tiny grid (the reference,
torchao, and under TRITON_INTERPRET=1 the Triton kernels interpreted); on a GPU (``-m gpu``) the
full grid for every available backend."""

import json

import pytest
import torch

from dq_kernels import cli
from dq_kernels.backends.reference import ReferenceBackend
from dq_kernels.bench import selftest

TINY = selftest.Grid(ms=(1, 33), ns=(72,), ks=(96,), variants=((True, torch.float32), (False, torch.bfloat16)))


def test_tiny_grid_passes_for_every_op_of_the_cpu_backends():
    cases = selftest.run(TINY, only=["reference", "torchao"], progress=lambda line: None)
    assert not selftest.failed(cases), selftest.problems(cases)
    ran = {(c.backend, c.op) for c in cases if c.status == "pass"}
    for name in ("reference", "torchao"):  # both implement every op
        assert {(name, op) for op in selftest.MM_OPS + selftest.CAST_OPS} <= ran
    mm = [c for c in cases if c.op in selftest.MM_OPS]
    # every variant, plus the NaN-padding check (both shapes have padded scales)
    assert len(mm) == 2 * 3 * len(TINY.ms) * (len(TINY.variants) + 1)
    assert all(c.error <= c.tolerance and c.seconds is not None for c in mm)


def test_a_wrong_result_fails_and_the_command_exits_1(monkeypatch, tmp_path, capsys):
    """A backend off by 1% of the output's magnitude in one element fails its cases; the JSON
    names them."""
    original = ReferenceBackend.mxfp8_mm

    def off_by_one_percent(self, a_q, a_s, b_q, b_s, bias, out_dtype):
        out = original(self, a_q, a_s, b_q, b_s, bias, out_dtype)
        out[-1, -1] += 0.01 * out.abs().max()
        return out

    monkeypatch.setattr(ReferenceBackend, "mxfp8_mm", off_by_one_percent)
    monkeypatch.setattr(selftest, "QUICK_GRID", TINY)
    path = tmp_path / "selftest.json"
    assert cli.main(["selftest", "--quick", "--backends", "reference", "--json", str(path)]) == 1
    out = capsys.readouterr().out
    assert "selftest: FAILED" in out and "FAIL reference mxfp8_mm M=33 N=72 K=96" in out
    document = json.loads(path.read_text())
    failed = {(c["op"], c["m"]) for c in document["cases"] if c["status"] == "fail"}
    assert ("mxfp8_mm", 33) in failed and all(op == "mxfp8_mm" for op, _ in failed)
    assert document["grid"] == {"M": [1, 33], "N": [72], "K": [96]} and "torch" in document
    assert "native" in document and "reference" in document["backends"]  # what a bug report needs


def test_command_passes_and_writes_json(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(selftest, "QUICK_GRID", TINY)
    path = tmp_path / "selftest.json"
    assert cli.main(["selftest", "--backends", "reference", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "selftest: passed" in out and "max rel err" in out
    cases = json.loads(path.read_text())["cases"]
    assert {c["status"] for c in cases} == {"pass"} and {c["backend"] for c in cases} == {"reference"}


def test_shapes_a_spec_refuses_are_skipped_with_its_reason():
    """N = 1001 is no multiple of 8: triton_sm100 (interpreted) refuses it, the reference runs it."""
    if not selftest.interpreted_backends(torch.device("cpu")):
        pytest.skip("needs TRITON_INTERPRET=1 without a GPU (the Triton backends interpreted)")
    grid = selftest.Grid(ms=(5,), ns=(1001,), ks=(64,), variants=((False, torch.float32),))
    cases = selftest.run(grid, only=["triton_sm100", "reference"], progress=lambda line: None)
    sm100 = [c for c in cases if c.backend == "triton_sm100"]
    assert sm100 and all(c.status == "skip" for c in sm100)
    assert any("needs N to be a multiple of 8" in c.note for c in sm100)
    assert all(c.status == "pass" for c in cases if c.backend == "reference")
    assert any(line.startswith("skipped triton_sm100 mxfp8_mm: needs N") for line in selftest.problems(cases))


def test_nan_in_the_scale_padding_reaches_no_output_on_any_cpu_backend():
    """Every backend that runs here (under TRITON_INTERPRET=1 also the Triton kernels), with 0xFF
    (NaN) in every padding byte of both operands' scales: padded scale rows (M = 77, N = 72) and
    columns (K = 96: 3 MXFP8, 6 NVFP4 scale columns). triton_sm100's MMA reads the padding columns
    (times zero-filled qdata): its kernel zeroes them; the others never read them."""
    grid = selftest.Grid(ms=(77,), ns=(72,), ks=(96,), variants=())
    cases = selftest.run(grid, progress=lambda line: None)
    padded = [c for c in cases if c.variant == "fp32 NaN padding"]
    assert {"reference", "torchao"} <= {c.backend for c in padded if c.status == "pass"}
    for c in padded:
        assert c.status == "pass" or (c.status == "skip" and (c.backend, c.op) in selftest.INTERPRETER_GAPS), c
    assert selftest.nan_padded(torch.zeros(128, 4, dtype=torch.uint8), "mxfp8", 77, 96).view(128, 4).sum() == (
        (128 * 4 - 77 * 3) * 255
    )


def test_tolerances_grow_with_k_and_bf16_rounding():
    assert selftest.tolerance(torch.float32, 4160) > selftest.tolerance(torch.float32, 160) > 0
    assert selftest.tolerance(torch.bfloat16, 160) > 2.0**-8 > selftest.tolerance(torch.float32, 4160)


@pytest.mark.gpu
def test_full_grid_on_the_gpu():
    """Every available backend, every op, the full grid (M up to 4096, K up to 4160)."""
    cases = selftest.run(selftest.GRID, progress=print)
    print(selftest.summary_rows(cases))
    assert not selftest.failed(cases), "\n".join(selftest.problems(cases))
    assert any(c.status == "pass" and c.m == 4096 and c.k == 4160 for c in cases)
