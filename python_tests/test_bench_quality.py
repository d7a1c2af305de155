"""``bench model --images`` (issue 22) on the CPU: PSNR and LPIPS plumbing (bench/quality.py), the
latents -> images path of FLUX and QwenImage (bench/images.py) against the pipelines' formulas, and
runs end to end through the CLI and ``model.run`` on checkpoints of a tiny random transformer and a
tiny random VAE written by the tests (no downloads). Not covered in CI: LPIPS with the real lpips
package (not installed; a stand-in checks the column, and a test that skips without it checks the
package's path on random AlexNet weights), prompts through real text encoders (transformers is not
installed: a stand-in pipeline checks the plumbing, and a test that skips without transformers >= 5
runs FluxPipeline.encode_prompt on tiny CLIP and T5 encoders), anything on a GPU."""

import json
import math
import os
import string
import sys
import types

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from dq_kernels import cli  # noqa: E402
from dq_kernels.bench import images, model, quality  # noqa: E402


def flux_vae():
    """A 4-level (8x) AutoencoderKL with 8 latent channels (the tiny FLUX transformer's 32 / 4),
    FLUX.1's scaling and shift factors."""
    torch.manual_seed(0)
    return diffusers.AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 8, 8), layers_per_block=1, latent_channels=8, norm_num_groups=4,
        scaling_factor=0.3611, shift_factor=0.1159)  # fmt: skip


def ltx2_vae():
    """A 32x spatial, 8x temporal AutoencoderKLLTX2Video with 32 latent channels (the tiny LTX-2
    transformer's), its default per-channel statistics and scaling factor."""
    torch.manual_seed(0)
    return diffusers.AutoencoderKLLTX2Video(latent_channels=32, block_out_channels=(8, 16, 32, 64),
                                            decoder_block_out_channels=(8, 16, 32), layers_per_block=(1,) * 5,
                                            decoder_layers_per_block=(1,) * 4)


def qwenimage_vae():
    """An 8x AutoencoderKLQwenImage with QwenImage's 16 latent channels (and its default factors)."""
    torch.manual_seed(0)
    return diffusers.AutoencoderKLQwenImage(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1)


def write_checkpoint(folder, name, vae):
    """A diffusers folder: transformer/ (the model's tiny config, random weights) and vae/."""
    spec = model.MODELS[name]
    torch.manual_seed(0)
    getattr(diffusers, spec.class_name)(**spec.tiny_config).save_pretrained(folder / "transformer")
    vae.save_pretrained(folder / "vae")
    return str(folder)


@pytest.fixture(scope="module")
def flux_checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("flux"), "flux", flux_vae())


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a red cube on a table\n\na cat in the snow\n")
    return str(path)


def pack(z):
    """diffusers 0.42 FluxPipeline._pack_latents (also QwenImagePipeline's): [B, C, 2h, 2w] -> [B, h*w, 4C]."""
    b, c, height, width = z.shape
    z = z.view(b, c, height // 2, 2, width // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return z.reshape(b, (height // 2) * (width // 2), c * 4)


# ---------------------------------------------------------------------------------------------- metrics


def test_psnr_of_known_images():
    a = torch.full((2, 3, 8, 8), 0.5)
    b = a.clone()
    b[0] += 0.1  # MSE 0.01 -> 20 dB at peak 1
    assert quality.psnr(b, a) == [pytest.approx(20.0), math.inf]
    with pytest.raises(ValueError, match="differ in shape"):
        quality.psnr(a, a[:1])


def test_lpips_unavailable_says_why(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "lpips", None)  # import lpips raises ImportError
    lp = quality.load_lpips("cpu")
    assert lp.distance is None and "pip install lpips" in lp.unavailable
    # the package present but AlexNet's weights not in torch's cache: no download, the path and the fix
    monkeypatch.setitem(sys.modules, "lpips", types.SimpleNamespace())
    tv = types.ModuleType("torchvision.models")
    tv.AlexNet_Weights = types.SimpleNamespace(IMAGENET1K_V1=types.SimpleNamespace(url="https://x/alexnet-owt.pth"))
    monkeypatch.setitem(sys.modules, "torchvision", types.ModuleType("torchvision"))
    monkeypatch.setitem(sys.modules, "torchvision.models", tv)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    lp = quality.load_lpips("cpu")
    assert lp.distance is None
    assert str(tmp_path / "hub" / "checkpoints" / "alexnet-owt.pth") in lp.unavailable and "TORCH_HOME" in lp.unavailable


def test_lpips_through_the_package(tmp_path, monkeypatch):
    """Where lpips and torchvision are installed (not in CI): the real package's path, on AlexNet
    weights the test writes (random: this checks the calls and shapes, not LPIPS values)."""
    pytest.importorskip("lpips")
    torchvision = pytest.importorskip("torchvision")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    url = torchvision.models.AlexNet_Weights.IMAGENET1K_V1.url
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(torchvision.models.alexnet().state_dict(), tmp_path / "hub" / "checkpoints" / url.split("/")[-1])
    lp = quality.load_lpips("cpu", chunk=2)
    a = torch.rand(3, 3, 64, 64)
    b = (a + 0.1 * torch.randn_like(a)).clamp(0, 1)
    assert lp.unavailable is None and lp.distance(a, a) == [0.0] * 3
    assert all(d > 0 for d in lp.distance(a, b)) and len(lp.distance(a, b)) == 3


# ---------------------------------------------------------------------------------------------- latents -> images


def test_unpack_inverts_the_pipelines_packing():
    z = torch.randn(2, 16, 6, 8)
    assert torch.equal(images.unpack(pack(z), 3, 4), z)
    with pytest.raises(ValueError, match="not a 4x4 grid"):
        images.unpack(pack(z), 4, 4)


@pytest.mark.parametrize("name, vae", [("flux", flux_vae), ("qwenimage", qwenimage_vae)])
def test_decoder_follows_the_pipeline(tmp_path, name, vae):
    """Decoder(packed) == the pipeline's decode: FLUX z / scaling_factor + shift_factor; QwenImage
    z * latents_std + latents_mean on one frame, frame 0 of the output; then (x + 1) / 2 clamped."""
    vae = vae().to(torch.bfloat16)
    vae.save_pretrained(tmp_path / "vae")
    config = vae.config
    z = torch.randn(1, 8 if name == "flux" else 16, 8, 8, dtype=torch.bfloat16)
    if name == "flux":
        expected = vae.decode(z / config.scaling_factor + config.shift_factor).sample
    else:
        std, mean = (torch.tensor(v).view(1, -1, 1, 1, 1).to(z) for v in (config.latents_std, config.latents_mean))
        expected = vae.decode(z.unsqueeze(2) * std + mean).sample[:, :, 0]
    with torch.inference_mode():
        out = images.Decoder(name, str(tmp_path)).decode([pack(z)], (64, 64), {})
    assert out.shape == (1, 3, 64, 64) and out.dtype == torch.float32
    assert torch.equal(out, (expected.float() / 2 + 0.5).clamp(0, 1))


def test_ltx2_decoder_follows_the_pipeline(tmp_path):
    """LTX2Pipeline's decode at its defaults: tokens (frame, row, column order, patch 1) to [B, C, f,
    h, w], z * latents_std / scaling_factor + latents_mean, decode; the frames become the images."""
    vae = ltx2_vae().to(torch.bfloat16)
    with torch.no_grad():  # statistics that are not 0 and 1, so that the formula shows
        vae.latents_mean.normal_()
        vae.latents_std.uniform_(0.5, 2)
    vae.save_pretrained(tmp_path / "vae")
    z = torch.randn(1, 32, 2, 2, 2, dtype=torch.bfloat16)  # [B, C, f, h, w]
    std, mean = (t.view(1, -1, 1, 1, 1).to(z) for t in (vae.latents_std, vae.latents_mean))
    expected = vae.decode(z * std / vae.config.scaling_factor + mean, None).sample  # [1, 3, 9, 64, 64]
    tokens = z.permute(0, 2, 3, 4, 1).reshape(1, 8, 32)  # as diffusers' LTX2Pipeline._pack_latents at patch 1
    with torch.inference_mode():
        out = images.Decoder("ltx2", str(tmp_path)).decode([tokens], (9, 64, 64),
                                                          dict(num_frames=2, height=2, width=2))
    assert out.shape == (9, 3, 64, 64)
    assert torch.equal(out, (expected.float()[0].transpose(0, 1) / 2 + 0.5).clamp(0, 1))
    with pytest.raises(ValueError, match="made 9 frames from the latents of a 17-frame run"):
        images.Decoder("ltx2", str(tmp_path)).decode([tokens], (17, 64, 64), dict(num_frames=2, height=2, width=2))


# ---------------------------------------------------------------------------------------------- end to end


def test_cli_images_report_psnr_lpips_and_save_pngs(flux_checkpoint, prompts, tmp_path, monkeypatch, capsys):
    # LPIPS through a stand-in (the mean absolute difference): the column's plumbing, not AlexNet
    monkeypatch.setattr(quality, "load_lpips", lambda device: quality.Lpips(
        lambda a, b: (a - b).abs().flatten(1).mean(1).tolist()))
    out, pngs = tmp_path / "model.json", tmp_path / "png"
    code = cli.main(["bench", "model", "flux", "--tiny", "--checkpoint", flux_checkpoint, "--steps", "3",
                     "--formats", "nvfp4", "--backends", "auto", "--images", "2", "--prompts", prompts,
                     "--json", str(out), "--save-images", str(pngs)])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "LPIPS" in printed and "PSNR dB" in printed
    assert "seeded random conditioning per prompt" in printed and "text does not reach the model" in printed
    bf16, nvfp4 = json.loads(out.read_text())["rows"]
    assert bf16["images"] == nvfp4["images"] == 2
    assert bf16["lpips"] == 0 and bf16["psnr"] is None  # the reference itself: PSNR infinite
    assert 0 < nvfp4["lpips"] < 0.1 and 20 < nvfp4["psnr"] < 100
    assert "seeded random" in nvfp4["image_conditioning"]
    assert sorted(p.name for p in pngs.iterdir()) == [f"flux-{c}-none-{i:03d}.png" for c in ("bf16", "nvfp4-auto")
                                                      for i in range(2)]


def test_run_images_without_lpips(flux_checkpoint, prompts, monkeypatch):
    """Without the lpips package: LPIPS None with the reason, PSNR still there; images only in the
    first batch size's rows."""
    monkeypatch.setitem(sys.modules, "lpips", None)
    rows = model.run(["flux"], [1, 2], None, 3, ["mxfp8"], ["auto"], ["none"], tiny=True, checkpoint=flux_checkpoint,
                     images=1, prompts=prompts)
    assert [(r.format, r.batch, r.images) for r in rows] == [("bf16", 1, 1), ("mxfp8", 1, 1), ("bf16", 2, None),
                                                           ("mxfp8", 2, None)]
    mxfp8 = rows[1]
    assert mxfp8.lpips is None and "pip install lpips" in mxfp8.lpips_unavailable and 20 < mxfp8.psnr < 100
    assert "n/a" in model.table(rows) and "LPIPS n/a (flux): the lpips package cannot be imported" in model.table(rows)


def test_random_conditioning_is_seeded_per_prompt(flux_checkpoint, tmp_path):
    """Without text encoders: image 2 (prompt 0 again) has prompt 0's conditioning and its own noise;
    prompt 1's conditioning differs."""
    path = tmp_path / "prompts.txt"
    path.write_text("one\ntwo\n")
    run = model.ImageRun(model.MODELS["flux"], flux_checkpoint, 3, str(path), (64, 64), True, "cpu", 3)
    assert run.prompts.encoded is None and "seeded random" in run.prompts.conditioning
    first, second, third = (run.image_inputs(i) for i in range(3))
    for key in ("encoder_hidden_states", "pooled_projections"):
        assert torch.equal(first.kwargs[key], third.kwargs[key]) and not torch.equal(first.kwargs[key],
                                                                                      second.kwargs[key])
    assert not torch.equal(first.noise, third.noise)
    assert torch.equal(run.image_inputs(0).noise, first.noise)  # the same seeds in every configuration


@pytest.mark.parametrize("name, vae, count", [("qwenimage", qwenimage_vae, 1), ("ltx2", ltx2_vae, 9)])
def test_qwenimage_and_ltx2_images(tmp_path, prompts, name, vae, count):
    """QwenImage: one image per image; LTX-2: a 9-frame video per image, each frame compared."""
    checkpoint = write_checkpoint(tmp_path / name, name, vae())
    rows = model.run([name], [1], None, 3, ["nvfp4"], ["auto"], ["none"], tiny=True, checkpoint=checkpoint,
                     images=1, prompts=prompts)
    assert [r.images for r in rows] == [count, count] and 10 < rows[1].psnr < 100


# ---------------------------------------------------------------------------------------------- errors


def test_images_arguments_are_checked(flux_checkpoint, prompts, tmp_path, capsys):
    def refused(*args):
        assert cli.main(["bench", "model", *args]) == 2
        return capsys.readouterr().out

    assert "needs --checkpoint PATH" in refused("flux", "--tiny", "--images", "2", "--prompts", prompts)
    assert "needs --prompts FILE" in refused("flux", "--tiny", "--checkpoint", flux_checkpoint, "--images", "1")
    missing = str(tmp_path / "missing.txt")
    assert f"--prompts {missing}: No such file" in refused("flux", "--tiny", "--checkpoint", flux_checkpoint,
                                                            "--images", "1", "--prompts", missing)
    (tmp_path / "empty.txt").write_text("\n  \n")
    assert "holds no prompt" in refused("flux", "--tiny", "--checkpoint", flux_checkpoint, "--images", "1",
                                        "--prompts", str(tmp_path / "empty.txt"))
    assert "--save-images writes the images of --images" in refused("flux", "--tiny", "--save-images", "x")
    no_vae = tmp_path / "no_vae"
    (no_vae / "transformer").mkdir(parents=True)
    (no_vae / "transformer" / "config.json").write_text(json.dumps(model.MODELS["flux"].tiny_config))
    assert "has no vae/ folder" in refused("flux", "--tiny", "--checkpoint", str(no_vae), "--images", "1",
                                           "--prompts", prompts)
    (no_vae / "transformer" / "config.json").write_text(json.dumps({**model.MODELS["flux"].tiny_config,
                                                                      "num_layers": 19}))
    assert "needs a checkpoint of the tiny flux config" in refused("flux", "--tiny", "--checkpoint", str(no_vae))


def test_images_refused_with_cp(flux_checkpoint, prompts, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(ValueError, match="--images with --cp is not supported"):
        model.validate(["flux"], None, 3, ["none"], True, flux_checkpoint, cp=2, images=1, prompts=prompts)


def test_prompts_through_the_pipelines_encode_prompt(flux_checkpoint, tmp_path, monkeypatch):
    """With text encoders in the checkpoint, each prompt's encode_prompt output replaces the random
    text conditioning. A stand-in pipeline (the real one needs the transformers package and real
    encoders) checks what is loaded, what is asked and where the outputs go."""
    checkpoint = tmp_path / "with_encoders"
    checkpoint.mkdir()
    for sub in ("transformer", "vae"):
        (checkpoint / sub).symlink_to(f"{flux_checkpoint}/{sub}")
    for sub in ("text_encoder", "text_encoder_2"):
        (checkpoint / sub).mkdir()
    (checkpoint / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline", "text_encoder": [
        "transformers", "CLIPTextModel"], "text_encoder_2": ["transformers", "T5EncoderModel"]}))
    calls = []

    class Pipeline:
        @classmethod
        def from_pretrained(cls, path, **kwargs):
            calls.append((path, kwargs["transformer"], kwargs["vae"]))
            return cls()

        def to(self, device):
            return self

        def encode_prompt(self, prompt, prompt_2=None, device=None):
            seed = len(prompt)
            return (torch.full((1, 5, 64), seed, dtype=torch.float32), torch.full((1, 64), -seed, dtype=torch.float32),
                    torch.zeros(5, 3))

    monkeypatch.setattr(diffusers, "FluxPipeline", Pipeline, raising=False)
    path = tmp_path / "prompts.txt"
    path.write_text("ab\nabc\n")
    run = model.ImageRun(model.MODELS["flux"], str(checkpoint), 2, str(path), (64, 64), True, "cpu", 3)
    assert calls == [(str(checkpoint), None, None)] and "text encoders" in run.prompts.conditioning
    second = run.image_inputs(1)
    assert second.kwargs["encoder_hidden_states"].shape == (1, 5, 64)
    assert (second.kwargs["encoder_hidden_states"] == 3).all() and (second.kwargs["pooled_projections"] == -3).all()
    assert second.kwargs["encoder_hidden_states"].dtype == torch.bfloat16 and second.kwargs["txt_ids"].shape == (5, 3)


def test_prompts_through_real_tiny_text_encoders(flux_checkpoint, tmp_path, prompts, monkeypatch):
    """Where transformers >= 5 is installed (not in CI): tiny CLIP and T5 encoders with their
    tokenizers in the checkpoint, FluxPipeline.encode_prompt on each prompt, images made."""
    transformers = pytest.importorskip("transformers")
    if int(transformers.__version__.split(".")[0]) < 5:
        pytest.skip("the tiny T5 tokenizer is built with the transformers >= 5 API")
    checkpoint = tmp_path / "with_encoders"
    checkpoint.mkdir()
    for sub in ("transformer", "vae"):
        (checkpoint / sub).symlink_to(f"{flux_checkpoint}/{sub}")
    chars = list(string.ascii_lowercase)
    vocab = {c: i for i, c in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    transformers.CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"),
                               model_max_length=77).save_pretrained(checkpoint / "tokenizer")
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [("\u2581" + c, -1.0) for c in chars]
    transformers.T5TokenizerFast(vocab=pieces, extra_ids=0).save_pretrained(checkpoint / "tokenizer_2")
    torch.manual_seed(0)  # 64 wide: the tiny transformer's pooled and text widths
    transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=64, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=77, bos_token_id=len(vocab) - 2, eos_token_id=len(vocab) - 1,
        pad_token_id=len(vocab) - 1)).save_pretrained(checkpoint / "text_encoder")
    transformers.T5EncoderModel(transformers.T5Config(vocab_size=len(pieces), d_model=64, d_ff=64, d_kv=16,
                                                      num_layers=1, num_heads=2)).save_pretrained(
        checkpoint / "text_encoder_2")
    diffusers.FlowMatchEulerDiscreteScheduler().save_pretrained(checkpoint / "scheduler")
    (checkpoint / "model_index.json").write_text(json.dumps({
        "_class_name": "FluxPipeline", "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"], "text_encoder_2": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "T5TokenizerFast"],
        "transformer": ["diffusers", "FluxTransformer2DModel"], "vae": ["diffusers", "AutoencoderKL"]}))
    monkeypatch.delenv("USE_HUB_KERNELS", raising=False)  # restored after the test
    run = model.ImageRun(model.MODELS["flux"], str(checkpoint), 2, prompts, (64, 64), True, "cpu", 3)
    assert os.environ["USE_HUB_KERNELS"] == "0"  # else transformers 5 wants the kernels package and the Hub
    assert run.prompts.conditioning == "the checkpoint's text encoders (the pipeline's encode_prompt)"
    first, second = run.image_inputs(0), run.image_inputs(1)
    assert first.kwargs["encoder_hidden_states"].shape == (1, 512, 64)  # T5 padded to 512 tokens
    assert first.kwargs["pooled_projections"].shape == (1, 64) and first.kwargs["txt_ids"].shape == (512, 3)
    assert not torch.equal(first.kwargs["encoder_hidden_states"], second.kwargs["encoder_hidden_states"])
    rows = model.run(["flux"], [1], None, 3, ["nvfp4"], ["auto"], ["none"], tiny=True, checkpoint=str(checkpoint),
                     images=1, prompts=prompts)
    assert rows[1].images == 1 and 10 < rows[1].psnr < 100
