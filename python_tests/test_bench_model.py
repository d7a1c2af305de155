"""``dq-kernels bench model`` on tiny models (CPU CI): bf16, mxfp8 and nvfp4 on both backends, eager,
run through the denoising loop; rows carry the documented fields, errors are measured against bf16,
and the JSON, table and charts are written; regional compile frees each model before the next; no
model's step copies host values to the device (what CUDA graph capture refuses), checked on the meta
device. Not covered on the CPU: fp8_rowwise (torchao's float8 needs a GPU) and running
regional-cudagraphs (CUDA graphs need a GPU; a GPU test compares its latent with the uncaptured
step's). Times on the CPU mean nothing and are not checked."""

import json
import traceback
import weakref

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

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


def test_cli_writes_json_table_and_charts(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DQ_KERNELS_COMPILE_CAST", "shared")
    out = tmp_path / "model.json"
    plot = tmp_path / "model.png"
    code = cli.main(["bench", "model", "flux", "--tiny", "--steps", "3", "--formats", "nvfp4", "--backends", "auto",
                     "--json", str(out), "--plot", str(plot)])  # fmt: skip
    assert code == 0
    document = json.loads(out.read_text())
    assert document["device"] == ("cpu" if not torch.cuda.is_available() else torch.cuda.get_device_name())
    assert [r["format"] for r in document["rows"]] == ["bf16", "nvfp4"]
    assert document["compile_cast"] == "shared"  # how the compiled rows would trace a quantized Linear
    assert plot.is_file() and (tmp_path / "model-memory.png").is_file()
    assert "ms/step" in capsys.readouterr().out
    monkeypatch.setenv("DQ_KERNELS_COMPILE_CAST", "fuse")
    assert cli.main(["bench", "model", "flux", "--tiny", "--steps", "3"]) == 2
    assert "DQ_KERNELS_COMPILE_CAST='fuse' must be one of" in capsys.readouterr().out


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
    # QwenImage and LTX-2 were refused while their steps copied host values to the GPU
    model.validate(list(model.MODELS), None, 3, ["regional-cudagraphs"], True, None)


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


# ---------------------------------------------------------------------------------------------- issue 22: CUDA graphs


class HostValues(TorchFunctionMode):
    """Records, as (what, where in diffusers), each place a forward makes a device tensor from host
    values or reads a device value on the host: torch.tensor / as_tensor, a copy between devices,
    .item() / .tolist() / nonzero / bool(tensor), and (through ``operands``) an op whose operands sit
    on different devices. CUDA graph capture refuses the copies and freezes the host reads."""

    HOST_CALLS = frozenset({"tensor", "as_tensor", "from_numpy", "item", "tolist", "nonzero", "__bool__", "__int__",
                            "__float__", "__index__"})  # fmt: skip

    def __init__(self):
        super().__init__()
        self.found = []
        self.operands = _MixedDevices(self.found)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", "")
        source, target = (args[1], args[0]) if name == "copy_" else (args[0] if args else None, out)
        crossed = (name in ("to", "copy_", "cuda") and isinstance(source, torch.Tensor)
                   and isinstance(target, torch.Tensor) and source.device != target.device)  # fmt: skip
        if name in self.HOST_CALLS or crossed:
            self.found.append((name, _diffusers_frame()))
        return out


class _MixedDevices(TorchDispatchMode):
    def __init__(self, found):
        super().__init__()
        self.found = found

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        leaves = torch.utils._pytree.tree_leaves((args, kwargs or {}))
        if len({t.device for t in leaves if isinstance(t, torch.Tensor)}) > 1:
            self.found.append((str(func), _diffusers_frame()))
        return func(*args, **(kwargs or {}))


def _diffusers_frame() -> str:
    frames = [f for f in traceback.extract_stack() if "/diffusers/" in f.filename]
    return f"{frames[-1].filename.split('/diffusers/')[-1]}:{frames[-1].name}" if frames else "outside diffusers"


def on_meta(spec, batch):
    """(tiny bf16 model, its inputs with the precomputed arguments), all on the meta device: a
    device that is not the host, so that every host-to-device copy shows."""
    built = model.build(spec, True, "meta")
    inputs = model.make_inputs(spec, batch, spec.tiny_resolution, True, "cpu")
    inputs = model.Inputs(*(torch.utils._pytree.tree_map(lambda v: v.to("meta") if torch.is_tensor(v) else v, part)
                            for part in (inputs.kwargs, inputs.negative, inputs.noise)))  # fmt: skip
    return built, model.with_precomputed(built, spec, inputs)


@pytest.mark.parametrize("name", list(model.MODELS))
def test_a_step_copies_no_host_values_to_the_device(name):
    spec = model.MODELS[name]
    built, inputs = on_meta(spec, 2)
    x = inputs.noise
    time = (spec.time_kwargs or model._timestep)(0.5, x, inputs.kwargs)
    with torch.inference_mode():
        model._velocity(built, spec, inputs, x, time)  # the warm-up fills diffusers' RoPE caches
        with HostValues() as record, record.operands:
            model._velocity(built, spec, inputs, x, time)
    assert record.found == []


def test_the_recorder_finds_what_the_forwards_would_copy():
    """Without what the bench feeds them, QwenImage (a text mask) and LTX-2 (no coordinates) copy
    host values in every forward: the recorder above sees those copies."""
    for name, where in (("qwenimage", "compute_text_seq_len_from_mask"), ("ltx2", "prepare_video_coords")):
        spec = model.MODELS[name]
        built, inputs = on_meta(spec, 1)
        if name == "qwenimage":
            inputs.kwargs["encoder_hidden_states_mask"] = torch.ones(1, 8, device="meta")
        else:
            inputs.kwargs["video_coords"] = None  # the forward builds them
        time = (spec.time_kwargs or model._timestep)(0.5, inputs.noise, inputs.kwargs)
        with torch.inference_mode(), HostValues() as record, record.operands:
            model._velocity(built, spec, inputs, inputs.noise, time)
        assert record.found and all(found[1].endswith(where) for found in record.found), record.found


def test_the_precomputed_inputs_change_no_forward_output():
    """LTX-2's coordinates computed before the loop are the forward's own; QwenImage without a text
    mask computes what it computes with an all-ones mask (on the CPU, bit for bit)."""
    for name in ("qwenimage", "ltx2"):
        spec = model.MODELS[name]
        built = model.build(spec, True, "cpu")
        inputs = model.make_inputs(spec, 2, spec.tiny_resolution, True, "cpu")
        time = (spec.time_kwargs or model._timestep)(0.5, inputs.noise, inputs.kwargs)
        given = model.with_precomputed(built, spec, inputs).kwargs
        if name == "qwenimage":
            own = {**inputs.kwargs, "encoder_hidden_states_mask": torch.ones(2, 8)}
        else:
            own = inputs.kwargs
            assert set(given) - set(own) == {"video_coords", "audio_coords"}
        with torch.inference_mode():
            outputs = [built(hidden_states=inputs.noise, **kwargs, **time, return_dict=False)[0]
                       for kwargs in (own, given)]
        assert torch.equal(*outputs)


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(model.MODELS))
def test_regional_cudagraphs_replays_the_uncaptured_step(name):
    """The captured step (regional-cudagraphs) gives the latent of the same compiled model's
    uncaptured steps, bit for bit, as inductor's reduce-overhead does in test_diffusers."""
    spec = model.MODELS[name]
    inputs = model.make_inputs(spec, 1, spec.tiny_resolution, True, "cuda")
    built = model.build(spec, True, "cuda")
    model.apply_format(built, spec, "nvfp4", "auto", tiny=True)
    model.apply_compile(built, "regional-cudagraphs")
    try:
        with torch.inference_mode():
            uncaptured, _ = model.denoise(built, spec, inputs, 4)
            captured, _ = model.denoise(built, spec, inputs, 4, cuda_graph=True)
    finally:
        torch._dynamo.reset()
    assert torch.equal(captured, uncaptured), model.compare(captured, uncaptured)
