"""``dq-kernels bench model`` on tiny models (CPU CI): bf16, mxfp8 and nvfp4 on both backends, eager,
run through the denoising loop; rows carry the documented fields, errors are measured against bf16,
and the JSON, table and charts are written; regional compile frees each model before the next, and
regional-cudagraphs is refused where a step cannot be captured. Not covered here: fp8_rowwise
(torchao's float8 needs a GPU) and running regional-cudagraphs (CUDA graphs need a GPU). Times on the
CPU mean nothing and are not checked."""

import json
import weakref

import pytest
import torch

pytest.importorskip("diffusers")

from dq_kernels import cli  # noqa: E402
from dq_kernels.bench import model  # noqa: E402

ROW_KEYS = {"model", "format", "backend", "batch", "compile", "step_ms", "speedup_vs_bf16", "peak_gib",
            "weights_gib", "rel_err", "cosine"}  # fmt: skip


@pytest.mark.parametrize("name", list(model.MODELS))
def test_tiny_model_every_configuration(name):
    rows = model.run([name], [1, 2], None, 3, ["mxfp8", "nvfp4"], ["auto", "torchao"], ["none"], tiny=True)
    assert [(r.format, r.backend, r.batch) for r in rows] == [
        (f, b, batch) for batch in (1, 2) for f, b in (("bf16", "-"), ("mxfp8", "auto"), ("mxfp8", "torchao"),
                                                       ("nvfp4", "auto"), ("nvfp4", "torchao"))
    ]
    for r in rows:
        assert ROW_KEYS <= set(r.to_json())
        if r.format == "bf16":
            assert r.rel_err == 0 and r.speedup_vs_bf16 == 1
        else:  # quantized: close to bf16, but not equal (the tiny preset quantizes the narrow layers)
            assert 0 < r.rel_err < 0.2 and r.cosine > 0.98
    weights = {(r.format, r.batch): r.weights_gib for r in rows}
    assert weights[("mxfp8", 1)] < weights[("bf16", 1)] and weights[("nvfp4", 1)] < weights[("mxfp8", 1)]


def test_auto_and_torchao_agree_on_the_denoised_latent():
    """Both backends run the same quantized operands: their final latents differ only by the
    accumulation order of the products (torchao EMULATED vs our reference on the CPU)."""
    rows = model.run(["flux"], [1], None, 3, ["mxfp8"], ["auto", "torchao"], ["none"], tiny=True)
    auto, torchao = (r for r in rows if r.format == "mxfp8")
    assert auto.rel_err == pytest.approx(torchao.rel_err, rel=0.2)


def test_cli_writes_json_table_and_charts(tmp_path, capsys):
    out = tmp_path / "model.json"
    plot = tmp_path / "model.png"
    code = cli.main(["bench", "model", "flux", "--tiny", "--steps", "3", "--formats", "nvfp4", "--backends", "auto",
                     "--json", str(out), "--plot", str(plot)])  # fmt: skip
    assert code == 0
    document = json.loads(out.read_text())
    assert document["device"] == ("cpu" if not torch.cuda.is_available() else torch.cuda.get_device_name())
    assert [r["format"] for r in document["rows"]] == ["bf16", "nvfp4"]
    assert plot.is_file() and (tmp_path / "model-memory.png").is_file()
    assert "ms/step" in capsys.readouterr().out


def test_full_size_needs_a_gpu(capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert cli.main(["bench", "model", "flux"]) == 2
    assert "--tiny" in capsys.readouterr().out
    with pytest.raises(ValueError, match="--tiny"):
        model.run(["flux"], [1], None, 3, ["mxfp8"], ["auto"], ["none"])


def test_bad_arguments_are_refused(capsys):
    assert cli.main(["bench", "model", "ltx2", "--tiny", "--resolution", "64x64"]) == 2
    assert "FxHxW" in capsys.readouterr().out
    assert cli.main(["bench", "model", "flux", "--tiny", "--checkpoint", "/nonexistent"]) == 2
    capsys.readouterr()
    # their diffusers forwards copy host values to the GPU every call: no whole-step CUDA graph
    for name in ("qwenimage", "ltx2"):
        assert cli.main(["bench", "model", name, "--tiny", "--compile", "regional-cudagraphs"]) == 2
        assert "use --compile regional" in capsys.readouterr().out


def test_steps_must_exceed_the_warm_up(capsys):
    with pytest.raises(ValueError, match="warm-up"):
        model.run(["flux"], [1], None, model.WARMUP_STEPS, ["mxfp8"], ["auto"], ["none"], tiny=True)
    assert cli.main(["bench", "model", "flux", "--tiny", "--steps", str(model.WARMUP_STEPS)]) == 2
    assert "warm-up" in capsys.readouterr().out


def test_each_configuration_frees_the_previous_model(monkeypatch):
    """peak_gib must count one model: when a configuration builds its model, the previous
    configuration's model is gone. On the H100 dynamo's caches kept compiled models alive into the
    next configurations (not reproduced on the CPU), so a compiled configuration also resets dynamo."""
    built, resets = [], []
    original = model.build
    monkeypatch.setattr(torch._dynamo, "reset", lambda original_reset=torch._dynamo.reset: (resets.append(1), original_reset()))

    def build(*args, **kwargs):
        assert all(ref() is None for ref in built), "a previous configuration's model is still alive"
        module = original(*args, **kwargs)
        built.append(weakref.ref(module))
        return module

    monkeypatch.setattr(model, "build", build)
    model.run(["flux"], [1], None, 3, ["mxfp8"], ["auto"], ["regional", "none"], tiny=True)
    assert len(built) == 4 and len(resets) == 2  # bf16 and mxfp8, each once compiled


# ---------------------------------------------------------------------------------------------- issue 21 #1

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks what a machine without CUDA skips")


@no_cuda
def test_cli_defaults_skip_what_cannot_run_here(tmp_path, capsys):
    # the default formats included fp8_rowwise, which torchao refuses without a GPU of CC >= 8.9,
    # and regional-cudagraphs crashed without CUDA
    out = tmp_path / "model.json"
    code = cli.main(["bench", "model", "flux", "--tiny", "--steps", "3", "--backends", "auto",
                     "--compile", "none", "regional-cudagraphs", "--json", str(out)])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "skipping format fp8_rowwise: torchao's float8 needs a CUDA GPU of compute capability >= 8.9" in printed
    assert "skipping compile mode regional-cudagraphs: CUDA graphs need a CUDA device" in printed
    rows = json.loads(out.read_text())["rows"]
    assert [(r["format"], r["compile"]) for r in rows] == [("bf16", "none"), ("mxfp8", "none"), ("nvfp4", "none")]


def test_cli_writes_each_row_as_it_finishes(tmp_path, monkeypatch):
    out = tmp_path / "model.json"
    run_one = model._run_one

    def crash_on_nvfp4(spec, inputs, batch, fmt, *args):
        if fmt == "nvfp4":
            raise RuntimeError("a crash in the third configuration")
        return run_one(spec, inputs, batch, fmt, *args)

    monkeypatch.setattr(model, "_run_one", crash_on_nvfp4)
    with pytest.raises(RuntimeError, match="third configuration"):
        cli.main(["bench", "model", "flux", "--tiny", "--steps", "3", "--formats", "mxfp8", "nvfp4",
                  "--backends", "auto", "--json", str(out)])  # fmt: skip
    assert [r["format"] for r in json.loads(out.read_text())["rows"]] == ["bf16", "mxfp8"]


def test_cli_refuses_batch_0_and_resolutions_without_tokens(capsys):
    with pytest.raises(SystemExit) as exit:
        cli.main(["bench", "model", "flux", "--tiny", "--batch", "0"])
    assert exit.value.code == 2
    assert "argument --batch: must be an integer >= 1, got '0'" in capsys.readouterr().err
    assert cli.main(["bench", "model", "flux", "--tiny", "--resolution", "8x8"]) == 2
    assert "--resolution: flux needs the height to be a positive multiple of 16, got 8" in capsys.readouterr().out
    assert cli.main(["bench", "model", "ltx2", "--tiny", "--resolution", "8x64x64"]) == 2
    assert "ltx2 needs the frames to be 8k + 1 for some k >= 1, got 8" in capsys.readouterr().out
    with pytest.raises(ValueError, match="--batch sizes must be >= 1, got 1 0"):
        model.run(["flux"], [1, 0], None, 3, ["mxfp8"], ["auto"], ["none"], tiny=True)
