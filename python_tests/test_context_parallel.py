"""Quantized transformers under diffusers' context parallelism (issue 23), on the CPU: two gloo
processes run the tiny FLUX of test_diffusers with Ulysses attention of degree 2, quantized with
MXFP8 and NVFP4 (reference backend), and compare with the same model in one process; ring attention
is attempted and skips with diffusers' reason; ``dq-kernels bench model --cp 2`` runs under torchrun
and refuses to run outside it. What the engine does and why the NVFP4 numbers differ:
docs/context-parallel.md. The NCCL runs on GPUs are not here (no machine with two GPUs was lent)."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

diffusers = pytest.importorskip("diffusers")

from dq_kernels import cli  # noqa: E402
from dq_kernels.bench import model as bench_model  # noqa: E402

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available() or not hasattr(diffusers, "ContextParallelConfig"),
    reason="needs torch.distributed with gloo and a diffusers with ContextParallelConfig",
)

# (format, options): NVFP4 both with the dynamic activation tensor scale (amax of each call's
# activation) and with a static one (activation_amax), which makes every token's quantization
# independent of the other tokens in the tensor; and NVFP4 weight-only (activations stay bf16).
CASES = {
    "bf16": None,
    "mxfp8": ("mxfp8", {}),
    "nvfp4": ("nvfp4", {}),
    "nvfp4-static": ("nvfp4", {"activation_amax": 8.0}),
    "nvfp4-w4a16": ("nvfp4", {"weight_only": True}),
}


# The processes started here run the CPU (gloo) path on any machine: with a GPU visible, diffusers
# would build a cuda device mesh and bench model would use nccl.
CPU_ONLY = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _flux(case):
    """The tiny FLUX of test_diffusers in bf16, quantized (every Linear the format takes) for ``case``."""
    import test_diffusers as td

    model = td.bf16_model("flux")
    if CASES[case] is not None:
        fmt, options = CASES[case]
        td.dqd.quantize(model, fmt, preset=td.all_layers("flux"), verbose=False, **options)
    return model


def _worker(rank: int, port: int, out_path: str) -> None:
    """One of two gloo processes: {case: relative L2 difference between the Ulysses output and the
    one-process output of the same model} and the outcome of ring attention, written by rank 0."""
    import test_diffusers as td

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    results = {}
    with torch.no_grad():
        kwargs = td.inputs("flux", 1)
        for case in CASES:
            model = _flux(case)
            one = td.run(model, kwargs)
            bench_model.enable_cp(model, 2, "ulysses")
            results[case] = td.rel_err(td.run(model, kwargs), one)
        model = _flux("bf16")
        try:
            one = td.run(model, kwargs)
            # diffusers' own default (native) attention, not enable_cp's ring backend: the CPU question
            with bench_model._one_device_without_accelerator():
                model.enable_parallelism(config=diffusers.ContextParallelConfig(ring_degree=2))
            results["ring"] = td.rel_err(td.run(model, kwargs), one)
        except ValueError as err:
            results["ring"] = f"{type(err).__name__}: {err}"
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump(results, f)
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("cp") / "results.json"
    saved = dict(os.environ)
    os.environ.update(CPU_ONLY)  # spawned processes inherit the environment
    try:
        torch.multiprocessing.spawn(_worker, args=(_free_port(), str(out)), nprocs=2)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return json.loads(out.read_text())


@pytest.mark.parametrize("case", ["bf16", "mxfp8", "nvfp4-static", "nvfp4-w4a16"])
def test_ulysses_matches_one_process(two_process_results, case):
    """Ulysses splits the sequence for the Linears (each token's MXFP8 block scales and a static
    NVFP4 tensor scale do not depend on the other tokens) and all-to-alls heads for attention, which
    then sees the whole sequence: the output is the one-process output up to reduction order."""
    assert two_process_results[case] < 1e-3


def test_ulysses_nvfp4_dynamic_scale_sees_half_the_tokens(two_process_results):
    """NVFP4's dynamic activation tensor scale is the amax of the activation each rank holds, half
    the tokens: the quantization differs from one process's (measured 0.008 at this size, below
    NVFP4's own error against bf16, 0.0146: test_diffusers ERROR_BOUND)."""
    assert 1e-3 < two_process_results["nvfp4"] < 0.02


def test_ring(two_process_results):
    result = two_process_results["ring"]
    if isinstance(result, str):
        pytest.skip(f"ring attention does not run on the CPU with diffusers {diffusers.__version__}: {result} "
                    "(ring merges chunks by their log-sum-exp; the backends that return it are CUDA-only)")
    assert result < 1e-3


def test_bench_model_cp_under_torchrun(tmp_path):
    out = tmp_path / "cp.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
               str(_free_port()), "-m", "dq_kernels", "bench", "model", "flux", "--tiny", "--steps", "3", "--formats",
               "mxfp8", "--backends", "auto", "--cp", "2", "--json", str(out)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, env=CPU_ONLY)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["format"], r["cp_degree"], r["cp_kind"]) for r in rows] == [
        ("bf16", 1, None), ("bf16", 2, "ulysses"), ("mxfp8", 1, None), ("mxfp8", 2, "ulysses")
    ]  # fmt: skip
    for r in rows:
        if r["cp_degree"] == 2:
            assert r["rel_err_vs_one_gpu"] < 1e-3 and r["speedup_vs_bf16"] is not None
    assert done.stdout.count("err vs cp 1") == 1  # rank 0 alone prints the table


def test_bench_model_cp_refusals(monkeypatch, capsys):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert cli.main(["bench", "model", "flux", "--tiny", "--cp", "2"]) == 2
    assert "torchrun --nproc-per-node 2" in capsys.readouterr().out
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert cli.main(["bench", "model", "flux", "--tiny", "--cp", "2"]) == 2
    assert "needs WORLD_SIZE == 2, but torchrun started 3" in capsys.readouterr().out
    monkeypatch.setenv("WORLD_SIZE", "2")
    if torch.cuda.is_available() and torch.cuda.device_count() < 2:
        assert cli.main(["bench", "model", "flux", "--tiny", "--cp", "2"]) == 2
        assert "needs 2 GPUs" in capsys.readouterr().out
        return
    assert cli.main(["bench", "model", "flux", "--tiny", "--cp", "2", "--compile", "regional-cudagraphs"]) == 2
    assert "regional-cudagraphs" in capsys.readouterr().out
    if not torch.cuda.is_available():
        assert cli.main(["bench", "model", "flux", "--tiny", "--cp", "2", "--cp-kind", "ring"]) == 2
        assert "CUDA-only" in capsys.readouterr().out
