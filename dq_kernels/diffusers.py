"""Selective quantization of Diffusers transformers: the published per-model rules as presets, and
``quantize(model, "mxfp8" | "nvfp4", preset=...)``, which applies them and prints what it did.

The presets follow the rules of the PyTorch blog "Faster Diffusion on Blackwell: MXFP8 and NVFP4
with Diffusers and TorchAO" (github.com/sayakpaul/diffusers-blackwell-quants, ``benchmark.py``):
skip Linear layers with in or out features < 1024, embeddings, the final norm and projection, and
per-model layers whose activations have few rows (M = batch or text length). The blog matched
substrings of module names; here every rule is a regular expression matched against the whole
name of a module of the diffusers 0.42 model class, so that (say) ``proj_out`` does not also
catch ``single_transformer_blocks.N.proj_out``.

``load_config`` is the same selection as a load-time quantization config (``from_pretrained``).
``quantize`` works on any ``torch.nn.Module``. On a Diffusers model it also records what it did
(``record_quantization``), so that ``save_pretrained`` can write the quantized weights as
safetensors and ``from_pretrained`` loads them back. diffusers is imported only for a Diffusers model.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from dataclasses import dataclass

import torch

from ._quiet import DIFFUSERS_IMPORT_NOISE, quiet_loggers
from .config import MXFP8Config, NVFP4Config, unsupported_reason  # imports torchao, quietly
from .tensor import MXFP8Weight, NVFP4Weight

__all__ = ["Preset", "PRESETS", "QuantizeReport", "quantize", "load_config", "record_quantization"]

CONFIGS = {"mxfp8": MXFP8Config, "nvfp4": NVFP4Config}


@dataclass(frozen=True)
class Preset:
    """Which Linear layers of a model family stay in high precision.

    A Linear is skipped when its fully qualified name matches one of ``skip`` (regular expressions,
    ``re.fullmatch``), or when its in_features or out_features is below ``min_features``.
    """

    name: str
    skip: tuple[str, ...]
    min_features: int = 1024

    def skip_reason(self, name: str, module: torch.nn.Linear) -> str | None:
        """Why this preset keeps ``module`` (called ``name`` in the model) unquantized, or None."""
        for pattern in self.skip:
            if re.fullmatch(pattern, name):
                return f"preset rule {pattern}"
        if min(module.in_features, module.out_features) < self.min_features:
            return f"{module.in_features} -> {module.out_features} features, below {self.min_features}"
        return None


BLOCK = r"transformer_blocks\.\d+"

PRESETS = {
    # FluxTransformer2DModel. Blog: "embed" in name, norm_out.linear, proj_out.
    "flux": Preset(
        "flux",
        skip=(r"time_text_embed\..+", "context_embedder", "x_embedder", r"norm_out\.linear", "proj_out"),
    ),
    # QwenImageTransformer2DModel. Blog: "embed", img_in, txt_in, img_mod, txt_mod, the text-stream
    # attention projections (add_q/k/v_proj, to_add_out), txt_mlp, norm_out.linear. proj_out (the
    # final projection, 3072 -> 64 at full size) is listed as well.
    "qwenimage": Preset(
        "qwenimage",
        skip=(
            r"time_text_embed\..+",
            "img_in",
            "txt_in",
            rf"{BLOCK}\.(img_mod|txt_mod)\.1",
            rf"{BLOCK}\.attn\.(add_q_proj|add_k_proj|add_v_proj|to_add_out)",
            rf"{BLOCK}\.txt_mlp\..+",
            r"norm_out\.linear",
            "proj_out",
        ),
    ),
    # LTX2VideoTransformer3DModel. Blog: proj_in, proj_out, caption_projection, adaln_single. The blog's
    # adaln_single (LTX-Video's name) is every LTX2AdaLayerNormSingle here: time_embed, the
    # av_cross_attn_* modulations and LTX-2.3's prompt_adaln, for video and audio. Its patch_embed,
    # norm_out and add_q/k/v_proj / to_add_out rules name no Linear of this class.
    "ltx2": Preset(
        "ltx2",
        skip=(
            r"(audio_)?proj_in",
            r"(audio_)?proj_out",
            r"(audio_)?caption_projection\.linear_[12]",
            r"(audio_)?time_embed\..+",
            r"av_cross_attn_(video_scale_shift|audio_scale_shift|video_a2v_gate|audio_v2a_gate)\..+",
            r"(audio_)?prompt_adaln\..+",
        ),
    ),
}


@dataclass
class QuantizeReport:
    """What ``quantize`` did: the names of the quantized Linear layers, and of the skipped ones with
    the reason. ``str(report)`` is the summary that ``quantize`` prints (repeated blocks grouped)."""

    title: str
    quantized: list[str]
    skipped: dict[str, str]

    def __str__(self) -> str:
        total = len(self.quantized) + len(self.skipped)
        lines = [f"{self.title}: quantized {len(self.quantized)} of {total} Linear layers"]
        for pattern, count in Counter(_block_pattern(n) for n in self.quantized).items():
            lines.append(f"  quantized  {pattern}" + (f"  (x{count})" if count > 1 else ""))
        skipped = Counter((_block_pattern(n), reason) for n, reason in self.skipped.items())
        for (pattern, reason), count in skipped.items():
            lines.append(f"  skipped    {pattern}: {reason}" + (f"  (x{count})" if count > 1 else ""))
        return "\n".join(lines)


def _block_pattern(name: str) -> str:
    """transformer_blocks.7.attn.to_q -> transformer_blocks.*.attn.to_q"""
    return re.sub(r"(?<=blocks\.)\d+(?=\.)", "*", name)


def _config(fmt: str, backend: str, options: dict) -> MXFP8Config | NVFP4Config:
    if fmt not in CONFIGS:
        raise ValueError(f"quantize: fmt must be one of {list(CONFIGS)}, got {fmt!r}")
    return CONFIGS[fmt](backend=backend, **options)


def _preset(preset: str | Preset | None) -> Preset | None:
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ValueError(f"quantize: unknown preset {preset!r}; known: {', '.join(PRESETS)}")
        return PRESETS[preset]
    return preset


def _plan(model: torch.nn.Module, config, preset: Preset | None) -> tuple[list[str], dict[str, str]]:
    """(names of the Linear layers to quantize, {name of a Linear to leave alone: why})."""
    quantized, skipped = [], {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            reason = (preset.skip_reason(name, module) if preset else None) or unsupported_reason(module, config)
            if reason is None:
                quantized.append(name)
            else:
                skipped[name] = reason
    return quantized, skipped


def quantize(
    model: torch.nn.Module,
    fmt: str,
    preset: str | Preset | None = None,
    backend: str = "auto",
    verbose: bool = True,
    **options,
) -> QuantizeReport:
    """Quantize the Linear layers of ``model`` in place to ``fmt`` ("mxfp8" or "nvfp4").

    preset: a name in ``PRESETS``, a ``Preset``, or None to quantize every Linear the format
        supports (in_features a multiple of the block size).
    backend: a registered backend name or "auto" (change it later with ``dq_kernels.set_backend``).
    options: further fields of the config, e.g. ``scaling="floor"`` for MXFP8, or
        ``weight_only=True`` / ``activation_amax=...`` for NVFP4.
    On a Diffusers model, also ``record_quantization(model)``, so that ``save_pretrained`` works.
    Prints the report unless ``verbose=False``; returns it.
    """
    from torchao.quantization import quantize_

    config, preset = _config(fmt, backend, options), _preset(preset)
    quantized, skipped = _plan(model, config, preset)
    selected = set(quantized)
    quantize_(model, config, filter_fn=lambda module, name: name in selected)
    if _is_diffusers_model(model):
        record_quantization(model)
    preset_name = preset.name if preset else None
    report = QuantizeReport(f"dq_kernels: {fmt}, preset {preset_name!r}, backend {backend!r}", quantized, skipped)
    if verbose:
        print(report)
    return report


def load_config(
    model: torch.nn.Module, fmt: str, preset: str | Preset | None = None, backend: str = "auto", **options
):
    """The load-time form of ``quantize(model, fmt, preset, backend, **options)``: a
    ``diffusers.TorchAoConfig(FqnToConfig({name: config}))`` naming exactly the Linear layers that
    ``quantize`` would quantize (every other layer stays as loaded), for
    ``from_pretrained(..., quantization_config=...)`` or
    ``PipelineQuantizationConfig(quant_mapping={"transformer": ...})``.

    ``model`` gives the layer names and sizes: the model itself, or an empty one of the same
    config, e.g. ``with torch.device("meta"): FluxTransformer2DModel.from_config(
    FluxTransformer2DModel.load_config(repo, subfolder="transformer"))``. (Diffusers'
    ``modules_to_not_convert`` cannot express a preset: it matches substrings, so ``proj_out``
    also skips every ``single_transformer_blocks.N.proj_out``.)
    """
    from diffusers import TorchAoConfig
    from torchao.quantization import FqnToConfig

    config = _config(fmt, backend, options)
    quantized, _ = _plan(model, config, _preset(preset))
    if not quantized:
        raise ValueError(f"load_config: the preset leaves no Linear layer of {type(model).__name__} to quantize")
    return TorchAoConfig(FqnToConfig(dict.fromkeys(quantized, config)))


def _is_diffusers_model(model: torch.nn.Module) -> bool:
    diffusers = sys.modules.get("diffusers")
    return diffusers is not None and isinstance(model, diffusers.ModelMixin)


def _config_of(weight: MXFP8Weight | NVFP4Weight) -> MXFP8Config | NVFP4Config:
    """The config that quantizes a Linear to this weight (for NVFP4 with a static activation
    scale s, activation_amax = s * 2688, which may differ from the calibrated amax in the last bit)."""
    if isinstance(weight, MXFP8Weight):
        return MXFP8Config(backend=weight.backend, scaling=weight.scaling)
    amax = None if weight.activation_scale is None else float(weight.activation_scale) * 448.0 * 6.0
    return NVFP4Config(backend=weight.backend, weight_only=weight.weight_only, activation_amax=amax)


def record_quantization(model: torch.nn.Module) -> None:
    """Record the dq_kernels weights of a Diffusers model (quantized after loading, e.g. with
    ``torchao.quantization.quantize_(model, dq_kernels.MXFP8Config())``) as its quantization config.

    Diffusers saves quantized weights only through the quantizer that ``from_pretrained`` attaches
    (``model.hf_quantizer``): without one, ``save_pretrained`` hands the weight subclasses to
    safetensors as plain tensors, which cannot work. This attaches diffusers' torchao quantizer with
    a ``TorchAoConfig(FqnToConfig({name: config}))`` naming every quantized Linear, as loading with
    that config would have done. Then ``save_pretrained`` (safetensors or pickle) writes the weights
    and the config, and ``from_pretrained`` loads them back exactly. ``quantize`` calls this itself.
    Call it again after quantizing more layers.
    """
    from diffusers import TorchAoConfig
    from torchao.quantization import FqnToConfig

    with quiet_loggers(*DIFFUSERS_IMPORT_NOISE):
        from diffusers.quantizers import DiffusersAutoQuantizer

    if not _is_diffusers_model(model):
        raise TypeError(f"record_quantization: model must be a diffusers ModelMixin, got {type(model).__name__}")
    existing = getattr(model, "hf_quantizer", None)
    if existing is not None and existing.quantization_config.quant_method != "torchao":
        raise ValueError(
            "record_quantization: the model was loaded with a "
            f"{existing.quantization_config.quant_method} quantization config; it cannot also record dq_kernels weights"
        )
    configs = {
        name: _config_of(module.weight)
        for name, module in model.named_modules()
        if isinstance(getattr(module, "weight", None), (MXFP8Weight, NVFP4Weight))
    }
    if not configs:
        raise ValueError(f"record_quantization: {type(model).__name__} has no dq_kernels-quantized weights")
    quantizer = DiffusersAutoQuantizer.from_config(TorchAoConfig(FqnToConfig(configs)), pre_quantized=True)
    quantizer.validate_environment(device_map=None)
    quantizer.preprocess_model(model, device_map=None)
    model.register_to_config(quantization_config=quantizer.quantization_config)  # written to config.json
    model.hf_quantizer = quantizer
