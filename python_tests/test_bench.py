"""``dq-kernels bench gemm`` and ``dq-kernels info``: shape parsing, presets, the CPU numerics mode
end to end (JSON schema, plot, skip notes), argument errors, and one small GPU run."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dq_kernels
from dq_kernels import cli
from dq_kernels.bench import gemm
from dq_kernels.bench.shapes import FLUX, PRESETS, Shape, parse_shape

HEADER_KEYS = ("device", "torch", "triton", "dq_kernels", "date", "command", "timing", "rows")
ROW_KEYS = ("format", "op", "backend", "M", "K", "N", "us", "tflops", "speedup_vs_bf16", "rel_err", "config",
            "transient_mib")


@pytest.fixture
def no_cuda(monkeypatch):
    """The CPU numerics mode, also on a machine with a GPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def run_cli(*argv: str) -> int:
    return cli.main(list(argv))


def cli_error(capsys, *argv: str) -> str:
    """Run a command line that argparse must refuse; return its stderr."""
    with pytest.raises(SystemExit) as exc:
        run_cli(*argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Shapes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, shape",
    [("4096x3072x12288", Shape(4096, 3072, 12288)), ("1x32x1", Shape(1, 32, 1)), (" 16X3072X18432 ", Shape(16, 3072, 18432))],
)
def test_parse_shape(text, shape):
    assert parse_shape(text) == shape


@pytest.mark.parametrize("text", ["4096x3072", "ax3x4", "64x48x64", "0x32x32", "-1x32x32", "4x32x32x1", "", "4096*3072*3072"])
def test_parse_shape_rejects(text):
    with pytest.raises(ValueError, match="MxKxN"):
        parse_shape(text)


@pytest.mark.parametrize("bad", ["4096x3072", "ax3x4", "64x48x64"])
def test_bad_shape_is_an_argparse_error(capsys, bad):
    err = cli_error(capsys, "bench", "gemm", "--shape", bad)
    assert "MxKxN" in err and bad in err


def test_presets_are_valid():
    assert set(PRESETS) == {"flux", "qwenimage", "ltx2", "square"}
    for name, shapes in PRESETS.items():
        assert shapes, name
        for s in shapes:
            assert s.M >= 1 and s.K % 32 == 0 and s.N % 32 == 0, (name, s)
            assert s.label, (name, s)
    assert [str(s) for s in FLUX] == [
        "4096x3072x3072", "4096x3072x12288", "4096x12288x3072", "512x3072x3072", "512x3072x12288",
        "512x12288x3072", "4608x3072x3072", "4608x3072x12288", "4608x15360x3072", "1x3072x18432",
        "16x3072x18432",
    ]


def test_shrunk_keeps_the_original_size_in_the_label():
    small = Shape(4096, 3072, 12288, "ff up").shrunk()
    assert (small.M, small.K, small.N) == (64, 256, 256)
    assert small.label == "ff up (4096x3072x12288)"
    assert Shape(1, 96, 40).shrunk() == Shape(1, 96, 40, "(1x96x40)")


# ---------------------------------------------------------------------------------------------
# Argument errors
# ---------------------------------------------------------------------------------------------


def test_unknown_op_lists_the_valid_ones(capsys):
    err = cli_error(capsys, "bench", "gemm", "--ops", "conv")
    assert "conv" in err and "mm" in err and "linear" in err


def test_unknown_format_lists_the_valid_ones(capsys):
    err = cli_error(capsys, "bench", "gemm", "--formats", "mxfp4")
    assert "mxfp4" in err and "mxfp8" in err and "nvfp4" in err


def test_unknown_backend_lists_the_valid_ones(capsys):
    err = cli_error(capsys, "bench", "gemm", "--backends", "nope")
    assert "nope" in err
    for status in dq_kernels.available_backends():
        assert status.name in err


def test_a_command_is_required(capsys):
    cli_error(capsys)
    cli_error(capsys, "bench")


# ---------------------------------------------------------------------------------------------
# The CPU numerics mode, end to end
# ---------------------------------------------------------------------------------------------


def test_cpu_numerics_flux_json(no_cuda, tmp_path, capsys):
    path = tmp_path / "gemm.json"
    assert run_cli("bench", "gemm", "--json", str(path)) == 0
    out = capsys.readouterr().out
    assert "No CUDA device" in out and "checks numerics" in out

    doc = json.loads(path.read_text())
    for key in HEADER_KEYS:
        assert key in doc, key
    assert doc["device"] == "cpu"
    assert doc["torch"] == torch.__version__
    assert doc["dq_kernels"] == dq_kernels.__version__
    assert isinstance(doc["triton"], str)
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", doc["date"])
    assert doc["command"] == f"dq-kernels bench gemm --json {path}"
    assert "no CUDA device" in doc["timing"]

    pairs = gemm.select_backends(gemm.FORMATS)
    assert {fmt for fmt, _ in pairs} == set(gemm.FORMATS) and ("mxfp8", "reference") in pairs
    assert ("nvfp4", "decode_cublas") in pairs
    assert len(doc["rows"]) + len(doc["skipped"]) == len(FLUX) * len(pairs) * len(gemm.OPS)
    assert {(r["format"], r["op"]) for r in doc["rows"] if r["backend"] == "decode_cublas"} == {
        (fmt, op) for fmt in gemm.FORMATS for op in gemm.OPS}
    for row in doc["rows"]:
        assert tuple(row) == ROW_KEYS
        assert row["format"] in gemm.FORMATS and (row["format"], row["backend"]) in pairs and row["op"] in gemm.OPS
        assert (row["transient_mib"] is not None) == (row["backend"] == "decode_cublas")
        assert row["M"] <= 64 and row["K"] <= 256 and row["N"] <= 256 and row["K"] % 32 == 0
        assert row["us"] is None and row["tflops"] is None and row["speedup_vs_bf16"] is None
        assert isinstance(row["config"], str)
        # against the reference's float32 output: the bf16 output rounding, plus the kernel's own error
        assert 0 <= row["rel_err"] < 1e-2, row
        if row["backend"] == "reference":
            assert row["rel_err"] < 4e-3, row
    assert [s["label"] for s in doc["shapes"]][0] == "attn q/k/v/out (4096x3072x3072)"


def test_cpu_table_has_a_row_per_pair_and_op(no_cuda, capsys):
    run_cli("bench", "gemm", "--shape", "96x64x160", "--formats", "nvfp4", "--backends", "reference")
    lines = [line for line in capsys.readouterr().out.splitlines() if " nvfp4 " in line]
    assert len(lines) == 2
    assert lines[0].split()[:7] == ["(96x64x160)", "64", "64", "160", "nvfp4", "mm", "reference"]
    assert lines[1].split()[:6] == ["64", "64", "160", "nvfp4", "linear", "reference"]


def test_cpu_ops_option_auto_and_decode_cublas_rows(no_cuda, tmp_path):
    """--ops linear runs the linear ops only; "auto" rows name the backend auto picks in their
    config; decode_cublas rows carry the temporary buffers its transient_bytes gives (bf16
    activation, bf16 output), in MiB."""
    path = tmp_path / "gemm.json"
    run_cli("bench", "gemm", "--shape", "64x256x96", "--ops", "linear", "--backends", "auto", "decode_cublas",
            "--json", str(path))
    rows = json.loads(path.read_text())["rows"]
    assert [(r["format"], r["op"], r["backend"]) for r in rows] == [
        (fmt, "linear", backend) for fmt in gemm.FORMATS for backend in ("auto", "decode_cublas")]
    backend = dq_kernels.backends.get_backend("decode_cublas")
    for row in rows:
        assert row["rel_err"] < 4e-3, row  # the bf16 rounding of the output
        if row["backend"] == "auto":
            assert row["config"] == "reference" and row["transient_mib"] is None
            continue
        expected = backend.transient_bytes(gemm.MM_OPS[row["format"]], 64, 96, 256, torch.bfloat16) / 2**20
        assert row["transient_mib"] == expected > 0


def test_rows_read_back_and_old_rows_are_mm_rows():
    row = gemm.Row(Shape(16, 64, 32), "nvfp4", "decode_cublas", 1.5, 1e-3, "cfg", 2.0, "linear", 0.25)
    assert gemm.Row.from_json(row.to_json()) == row
    committed = Path(__file__).parents[1] / "benchmarks/results/gemm-h100.json"
    old = json.loads(committed.read_text())["rows"][0]  # as rows were written before the op and transient fields
    del old["op"], old["transient_mib"]
    assert gemm.Row.from_json(old).op == "mm" and gemm.Row.from_json(old).transient_mib is None


def test_cpu_plot_shows_the_relative_error(no_cuda, tmp_path, capsys):
    path = tmp_path / "gemm.png"
    run_cli("bench", "gemm", "--shape", "64x256x256", "128x64x32", "--plot", str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "relative error" in capsys.readouterr().out


def test_backend_that_cannot_run_is_skipped_with_a_note(no_cuda, monkeypatch, tmp_path, capsys):
    real_mm = dq_kernels.mxfp8_mm

    def refusing_mm(*args, backend=None, **kwargs):
        if backend == "torchao":
            raise dq_kernels.BackendUnavailableError("torchao refuses this shape\nsecond line")
        return real_mm(*args, backend=backend, **kwargs)

    monkeypatch.setattr(dq_kernels, "mxfp8_mm", refusing_mm)
    path = tmp_path / "gemm.json"
    run_cli("bench", "gemm", "--shape", "64x64x64", "--formats", "mxfp8", "--backends", "torchao", "reference",
            "--ops", "mm", "--json", str(path))
    assert "skipped mxfp8 mm / torchao at 64x64x64: torchao refuses this shape" in capsys.readouterr().out
    doc = json.loads(path.read_text())
    assert [(r["format"], r["backend"]) for r in doc["rows"]] == [("mxfp8", "reference")]
    assert doc["skipped"] == [{"format": "mxfp8", "op": "mm", "backend": "torchao", "M": 64, "K": 64, "N": 64,
                               "reason": "torchao refuses this shape"}]


# ---------------------------------------------------------------------------------------------
# info
# ---------------------------------------------------------------------------------------------


def test_info_lists_every_backend(capsys):
    assert run_cli("info") == 0
    out = capsys.readouterr().out
    assert "GPU:" in out and "native library:" in out and f"dq_kernels: {dq_kernels.__version__}" in out
    for status in dq_kernels.available_backends():
        assert re.search(rf"^{status.name}\s+(yes|no)\s", out, re.MULTILINE), status.name


def test_python_m_dq_kernels_info(tmp_path):
    # Import the same dq_kernels as this process, wherever it comes from.
    package_root = str(Path(dq_kernels.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "dq_kernels", "info"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for status in dq_kernels.available_backends():
        assert status.name in proc.stdout


# ---------------------------------------------------------------------------------------------
# GPU
# ---------------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_gpu_bench_times_the_baselines(tmp_path):
    path = tmp_path / "gemm.json"
    assert run_cli("bench", "gemm", "--shape", "256x256x256", "--json", str(path)) == 0
    doc = json.loads(path.read_text())
    assert doc["device"] == torch.cuda.get_device_name()
    rows = {(r["format"], r["backend"]): r for r in doc["rows"]}
    for key in (("bf16", "cublas"), ("fp8", "cublas")):
        assert rows[key]["us"] > 0 and rows[key]["tflops"] > 0 and rows[key]["rel_err"] < 0.1
    assert rows[("bf16", "cublas")]["speedup_vs_bf16"] == 1.0
    assert rows[("mxfp8", "reference")]["us"] > 0
    timed = {(r["format"], r["op"]) for r in doc["rows"] if r["backend"] == "decode_cublas"}
    assert timed == {(fmt, op) for fmt in gemm.FORMATS for op in gemm.OPS}
    for row in doc["rows"]:
        assert tuple(row) == ROW_KEYS
        assert row["us"] > 0 and row["speedup_vs_bf16"] > 0
        if row["format"] in gemm.FORMATS:
            assert row["rel_err"] < 1e-2, row
