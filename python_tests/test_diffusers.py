"""Diffusers integration on tiny FLUX, QwenImage and LTX-2 transformers built from configs (1 + 1
layers, 2 heads of 32, widths multiples of 32): selective quantization with the presets, error
against bf16 at batch 1 and 3, save_pretrained / from_pretrained round trips, torch.compile."""

import dataclasses
import os
import pathlib
import subprocess
import sys

import pytest
import torch
from torchao.quantization import quantize_

diffusers = pytest.importorskip("diffusers")

import dq_kernels.diffusers as dqd  # noqa: E402
from dq_kernels.config import MXFP8Config, NVFP4Config, set_backend  # noqa: E402
from dq_kernels.tensor import QuantizedWeight  # noqa: E402

HEADS, HEAD_DIM = 2, 32


def tiny_flux():
    return diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=32, num_layers=1, num_single_layers=1, attention_head_dim=HEAD_DIM,
        num_attention_heads=HEADS, joint_attention_dim=64, pooled_projection_dim=64, guidance_embeds=True,
        axes_dims_rope=(8, 12, 12),
    )  # fmt: skip


def flux_inputs(batch, g):
    ids = torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(4.0), torch.arange(4.0), indexing="ij"), -1)
    return dict(
        hidden_states=torch.randn(batch, 16, 32, generator=g),
        encoder_hidden_states=torch.randn(batch, 8, 64, generator=g),
        pooled_projections=torch.randn(batch, 64, generator=g),
        timestep=torch.full((batch,), 0.5),
        img_ids=ids.reshape(16, 3),
        txt_ids=torch.zeros(8, 3),
        guidance=torch.full((batch,), 3.5),
    )


def tiny_qwenimage():
    return diffusers.QwenImageTransformer2DModel(
        patch_size=2, in_channels=64, out_channels=16, num_layers=1, attention_head_dim=HEAD_DIM,
        num_attention_heads=HEADS, joint_attention_dim=64, axes_dims_rope=(8, 12, 12),
    )  # fmt: skip


def qwenimage_inputs(batch, g):
    return dict(
        hidden_states=torch.randn(batch, 16, 64, generator=g),
        encoder_hidden_states=torch.randn(batch, 8, 64, generator=g),
        encoder_hidden_states_mask=torch.ones(batch, 8),
        timestep=torch.full((batch,), 0.5),
        img_shapes=[(1, 4, 4)] * batch,
    )


def tiny_ltx2(**extra):
    return diffusers.LTX2VideoTransformer3DModel(
        in_channels=32, out_channels=32, num_attention_heads=HEADS, attention_head_dim=HEAD_DIM, cross_attention_dim=64,
        audio_in_channels=32, audio_out_channels=32, audio_num_attention_heads=HEADS, audio_attention_head_dim=HEAD_DIM,
        audio_cross_attention_dim=64, num_layers=1, caption_channels=64, **extra,
    )  # fmt: skip


def ltx2_inputs(batch, g):
    return dict(
        hidden_states=torch.randn(batch, 8, 32, generator=g),  # 2 frames of 2 x 2 latents
        audio_hidden_states=torch.randn(batch, 4, 32, generator=g),
        encoder_hidden_states=torch.randn(batch, 8, 64, generator=g),
        audio_encoder_hidden_states=torch.randn(batch, 8, 64, generator=g),
        timestep=torch.full((batch, 8), 500.0),
        audio_timestep=torch.full((batch, 4), 500.0),
        num_frames=2,
        height=2,
        width=2,
        audio_num_frames=4,
    )


MODELS = {
    "flux": (tiny_flux, flux_inputs),
    "qwenimage": (tiny_qwenimage, qwenimage_inputs),
    "ltx2": (tiny_ltx2, ltx2_inputs),
}
FORMATS = {"mxfp8": ("mxfp8", {}), "nvfp4": ("nvfp4", {}), "nvfp4-w4a16": ("nvfp4", {"weight_only": True})}

# Relative L2 error of the quantized model's output against the bf16 model's, at batch 1 and 3.
# Measured on CPU (reference backend): flux 0.0055 / 0.0146 / 0.0113 (mxfp8 / nvfp4 / nvfp4-w4a16),
# qwenimage 0.0042 / 0.0087 / 0.0069, ltx2 0.0292 / 0.1229 / 0.1021 (the worse of the two batches).
# Bounds are those times ~1.35, rounded up. (For scale: bf16 against float32 is 0.031 / 0.005 / 0.007.)
ERROR_BOUND = {
    ("flux", "mxfp8"): 0.0075, ("flux", "nvfp4"): 0.02, ("flux", "nvfp4-w4a16"): 0.016,
    ("qwenimage", "mxfp8"): 0.006, ("qwenimage", "nvfp4"): 0.012, ("qwenimage", "nvfp4-w4a16"): 0.0095,
    ("ltx2", "mxfp8"): 0.04, ("ltx2", "nvfp4"): 0.17, ("ltx2", "nvfp4-w4a16"): 0.14,
}  # fmt: skip


@pytest.fixture(autouse=True)
def no_grad():
    with torch.no_grad():  # inference only: the dq_kernels ops have no autograd formula
        yield


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def bf16_model(name):
    torch.manual_seed(0)
    return MODELS[name][0]().to(torch.bfloat16).eval()


def inputs(name, batch):
    kwargs = MODELS[name][1](batch, torch.Generator().manual_seed(1))
    return {k: v.to(torch.bfloat16) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in kwargs.items()}


def run(model, kwargs):
    """The model's outputs (LTX-2 has video and audio), flattened into one float32 vector."""
    return torch.cat([out.float().flatten() for out in model(**kwargs, return_dict=False)])


def all_layers(name):
    """The model's preset with the size rule off: tiny layers are all below 1024 features."""
    return dataclasses.replace(dqd.PRESETS[name], min_features=0)


def quantized(name, fmt):
    model = bf16_model(name)
    fmt_name, options = FORMATS[fmt]
    dqd.quantize(model, fmt_name, preset=all_layers(name), verbose=False, **options)
    return model


def rel_err(out, ref):
    return ((out - ref).norm() / ref.norm()).item()


# ---------------------------------------------------------------------------------------------- presets


# LTX-2's adaLN modulations (LTX2AdaLayerNormSingle: emb.timestep_embedder.linear_1/2 and linear);
# prompt_adaln exists in LTX-2.3 configs only.
LTX2_ADALN = (
    "time_embed", "audio_time_embed", "prompt_adaln", "audio_prompt_adaln", "av_cross_attn_video_scale_shift",
    "av_cross_attn_audio_scale_shift", "av_cross_attn_video_a2v_gate", "av_cross_attn_audio_v2a_gate",
)  # fmt: skip
ADALN_LINEARS = ("emb.timestep_embedder.linear_1", "emb.timestep_embedder.linear_2", "linear")

# What each preset leaves in bf16 in the tiny models (block indices as 0).
PRESET_SKIPS = {
    "flux": {
        *(f"time_text_embed.{e}_embedder.linear_{i}" for e in ("timestep", "guidance", "text") for i in (1, 2)),
        "context_embedder", "x_embedder", "norm_out.linear", "proj_out",
    },
    "qwenimage": {
        "time_text_embed.timestep_embedder.linear_1", "time_text_embed.timestep_embedder.linear_2", "img_in", "txt_in",
        "transformer_blocks.0.img_mod.1", "transformer_blocks.0.txt_mod.1",
        *(f"transformer_blocks.0.attn.{p}" for p in ("add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")),
        "transformer_blocks.0.txt_mlp.net.0.proj", "transformer_blocks.0.txt_mlp.net.2", "norm_out.linear", "proj_out",
    },
    "ltx2": {
        "proj_in", "audio_proj_in", "proj_out", "audio_proj_out",
        *(f"{p}caption_projection.linear_{i}" for p in ("", "audio_") for i in (1, 2)),
        *(f"{m}.{layer}" for m in LTX2_ADALN for layer in ADALN_LINEARS),
    },
}  # fmt: skip


@pytest.mark.parametrize("name", MODELS)
def test_preset_skips_exactly_the_named_layers(name, capsys):
    torch.manual_seed(0)
    # LTX-2.3's prompt modulation, so that every rule of the ltx2 preset has a layer to match
    model = tiny_ltx2(cross_attn_mod=True, audio_cross_attn_mod=True) if name == "ltx2" else MODELS[name][0]()
    linears = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    report = dqd.quantize(model, "mxfp8", preset=all_layers(name))
    assert set(report.skipped) == PRESET_SKIPS[name]
    assert set(report.quantized) == linears - PRESET_SKIPS[name]
    for n, m in model.named_modules():
        if isinstance(m, torch.nn.Linear):
            assert isinstance(m.weight, QuantizedWeight) == (n in report.quantized)
    printed = capsys.readouterr().out
    header = f"dq_kernels: mxfp8, preset {name!r}, backend 'auto': quantized {len(report.quantized)} of"
    assert printed.startswith(header)
    assert "  quantized  transformer_blocks.*." in printed


def test_preset_size_rule_and_unsupported_layers():
    torch.manual_seed(0)
    model = torch.nn.ModuleDict({"big": torch.nn.Linear(1024, 2048), "narrow": torch.nn.Linear(1024, 512)})
    report = dqd.quantize(model, "nvfp4", preset="flux", verbose=False)
    assert report.quantized == ["big"] and report.skipped == {"narrow": "1024 -> 512 features, below 1024"}
    odd = torch.nn.Sequential(torch.nn.Linear(40, 64), torch.nn.Linear(64, 64))
    report = dqd.quantize(odd, "mxfp8", verbose=False)
    assert report.skipped == {"0": "in_features = 40 is not a multiple of 32 (the mxfp8 block size)"}
    assert "skipped    0: in_features = 40" in str(report)
    with pytest.raises(ValueError, match="unknown preset 'sd3'; known: flux, qwenimage, ltx2"):
        dqd.quantize(odd, "mxfp8", preset="sd3")
    with pytest.raises(ValueError, match="fmt must be one of"):
        dqd.quantize(odd, "int8")


# ---------------------------------------------------------------------------------------------- numerics


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", MODELS)
def test_quantized_model_is_close_to_bf16_at_batch_1_and_3(name, fmt):
    reference, model = bf16_model(name), quantized(name, fmt)
    for batch in (1, 3):
        kwargs = inputs(name, batch)
        assert rel_err(run(model, kwargs), run(reference, kwargs)) < ERROR_BOUND[name, fmt]


def test_set_backend_on_a_model():
    model, kwargs = quantized("flux", "mxfp8"), inputs("flux", 3)
    auto = run(model, kwargs)
    set_backend(model, "torchao")
    assert rel_err(run(model, kwargs), auto) < 0.01
    set_backend(model, "auto")
    assert torch.equal(run(model, kwargs), auto)


def test_fuse_qkv_projections_after_quantizing():
    # diffusers concatenates the quantized q/k/v weights and copies them into a bf16 Linear
    model, kwargs = quantized("flux", "mxfp8"), inputs("flux", 3)
    before = run(model, kwargs)
    model.fuse_qkv_projections()
    assert rel_err(run(model, kwargs), before) < 0.01


# ---------------------------------------------------------------------------------------------- save / load


@pytest.mark.parametrize("config", [MXFP8Config(), NVFP4Config()], ids=["mxfp8", "nvfp4"])
@pytest.mark.parametrize("name", MODELS)
def test_from_pretrained_then_save_and_load_is_exact(name, config, tmp_path):
    reference = bf16_model(name)
    reference.save_pretrained(tmp_path / "bf16")
    model_class, kwargs = type(reference), inputs(name, 3)
    model = model_class.from_pretrained(
        tmp_path / "bf16", quantization_config=diffusers.TorchAoConfig(config), torch_dtype=torch.bfloat16
    )
    assert any(isinstance(p, QuantizedWeight) for p in model.parameters())
    expected = run(model, kwargs)
    model.save_pretrained(tmp_path / "safetensors")
    model.save_pretrained(tmp_path / "pickle", safe_serialization=False)
    for path, use_safetensors in ((tmp_path / "safetensors", True), (tmp_path / "pickle", False)):
        loaded = model_class.from_pretrained(path, torch_dtype=torch.bfloat16, use_safetensors=use_safetensors)
        assert loaded.config.quantization_config.quant_type == config
        assert torch.equal(run(loaded, kwargs), expected)


def quantized_names(model):
    return {n for n, m in model.named_modules() if isinstance(getattr(m, "weight", None), QuantizedWeight)}


@pytest.mark.parametrize("route", ["dq.diffusers.quantize", "quantize_ then record_quantization"])
def test_quantized_after_loading_saves_and_loads_exactly(route, tmp_path):
    # issue 21 #9: without a recorded quantizer, save_pretrained handed the weight subclasses to
    # safetensors ("Attempted to access the data pointer on an invalid python storage")
    model, kwargs = bf16_model("flux"), inputs("flux", 3)
    if route == "dq.diffusers.quantize":
        dqd.quantize(model, "nvfp4", preset=all_layers("flux"), verbose=False)
    else:
        quantize_(model, MXFP8Config())
        dqd.record_quantization(model)
    expected = run(model, kwargs)
    for safe in (True, False):
        model.save_pretrained(tmp_path / str(safe), safe_serialization=safe)
        loaded = type(model).from_pretrained(tmp_path / str(safe), torch_dtype=torch.bfloat16, use_safetensors=safe)
        assert quantized_names(loaded) == quantized_names(model)
        assert torch.equal(run(loaded, kwargs), expected)


def test_saving_an_unrecorded_quantized_model_names_the_fix(tmp_path):
    model = bf16_model("flux")
    quantize_(model, MXFP8Config())
    with pytest.raises(RuntimeError, match=r"record_quantization\(model\) before save_pretrained"):
        model.save_pretrained(tmp_path)
    with pytest.raises(TypeError, match="must be a diffusers ModelMixin"):
        dqd.record_quantization(torch.nn.Linear(32, 32))
    with pytest.raises(ValueError, match="has no dq_kernels-quantized weights"):
        dqd.record_quantization(bf16_model("flux"))


LOAD_IN_A_NEW_PROCESS = """
import sys
import dq_kernels  # the only dq_kernels import (issue 21 #2)
assert "torchao" not in sys.modules, "import dq_kernels must not import torchao"
import diffusers, torch
model = diffusers.FluxTransformer2DModel.from_pretrained(sys.argv[1], torch_dtype=torch.bfloat16)
print(sorted({type(p).__name__ for p in model.parameters()}))
"""


def test_import_dq_kernels_is_enough_to_load_a_checkpoint(tmp_path):
    # issue 21 #2: the new process failed with "Failed to find class MXFP8Config in any of the allowed modules"
    bf16_model("flux").save_pretrained(tmp_path / "bf16")
    model = diffusers.FluxTransformer2DModel.from_pretrained(
        tmp_path / "bf16", quantization_config=diffusers.TorchAoConfig(MXFP8Config()), torch_dtype=torch.bfloat16
    )
    model.save_pretrained(tmp_path / "mxfp8")
    root = str(pathlib.Path(__file__).resolve().parents[1])
    env = os.environ | {"PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", LOAD_IN_A_NEW_PROCESS, str(tmp_path / "mxfp8")], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['MXFP8Weight', 'Parameter']"


@pytest.mark.parametrize("name", ["flux", "ltx2"])
def test_load_config_reproduces_the_preset(name, tmp_path):
    # issue 21 #10: the load-time form of quantize(model, fmt, preset), for from_pretrained
    preset = dataclasses.replace(dqd.PRESETS[name], min_features=64)  # the size rule skips some tiny layers
    bf16_model(name).save_pretrained(tmp_path)
    model_class = type(bf16_model(name))
    with torch.device("meta"):
        skeleton = model_class.from_config(model_class.load_config(tmp_path))
    config = dqd.load_config(skeleton, "nvfp4", preset=preset)
    loaded = model_class.from_pretrained(tmp_path, quantization_config=config, torch_dtype=torch.bfloat16)
    expected = bf16_model(name)
    report = dqd.quantize(expected, "nvfp4", preset=preset, verbose=False)
    assert report.quantized and report.skipped
    assert quantized_names(loaded) == quantized_names(expected) == set(report.quantized)
    loaded_params, expected_params = dict(loaded.named_parameters()), dict(expected.named_parameters())
    for param in (f"{n}.weight" for n in report.quantized):
        assert torch.equal(loaded_params[param].qdata, expected_params[param].qdata)
        assert torch.equal(loaded_params[param].scale.view(torch.uint8), expected_params[param].scale.view(torch.uint8))
    pipeline_config = diffusers.PipelineQuantizationConfig(quant_mapping={"transformer": config})
    assert pipeline_config.quant_mapping["transformer"] is config


# ---------------------------------------------------------------------------------------------- compile
# aot_eager runs dynamo and AOT autograd (where the subclass is flattened) without codegen, so the
# outputs must equal eager exactly; one inductor test keeps the CPU suite fast.


@pytest.mark.parametrize("fmt", ["mxfp8", "nvfp4"])
@pytest.mark.parametrize("name", MODELS)
def test_compile_fullgraph(name, fmt, fresh_dynamo):
    model, kwargs = quantized(name, fmt), inputs(name, 3)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    assert torch.equal(run(compiled, kwargs), run(model, kwargs))


@pytest.mark.parametrize("name", MODELS)
def test_compile_repeated_blocks_fullgraph(name, fresh_dynamo):
    # NVFP4 under regional compile with batch > 1 is where torchao's NVFP4Tensor met aten.expand
    model, kwargs = quantized(name, "nvfp4"), inputs(name, 3)
    expected = run(model, kwargs)
    model.compile_repeated_blocks(fullgraph=True, backend="aot_eager")
    assert torch.equal(run(model, kwargs), expected)


def test_compile_repeated_blocks_inductor(fresh_dynamo):
    model, kwargs = quantized("qwenimage", "mxfp8"), inputs("qwenimage", 3)
    expected = run(model, kwargs)
    model.compile_repeated_blocks(fullgraph=True)
    assert rel_err(run(model, kwargs), expected) < 0.01


@pytest.mark.gpu
@pytest.mark.parametrize("fmt", ["mxfp8", "nvfp4"])
def test_cuda_graphs_reduce_overhead(fmt, fresh_dynamo):
    model, kwargs = quantized("flux", fmt).cuda(), inputs("flux", 3)
    kwargs = {k: v.cuda() if torch.is_tensor(v) else v for k, v in kwargs.items()}
    # inductor computes FLUX's bf16 elementwise work in float32, so compare with inductor, not eager
    expected = run(torch.compile(model, fullgraph=True), kwargs)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, mode="reduce-overhead")
    for _ in range(3):  # warm-up, capture, replay
        out = run(compiled, kwargs)
    assert torch.equal(out, expected)
