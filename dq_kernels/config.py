"""Quantization configs for ``torchao.quantization.quantize_`` and ``diffusers.TorchAoConfig``, and
``set_backend`` to switch the backend of an already-quantized model.

Importing this module registers, once:

* the handler of each config with torchao's ``quantize_``;
* this module in ``torchao.core.config.ALLOWED_AO_MODULES``, so that a diffusers
  ``quantization_config`` naming our configs (saved in ``config.json``) loads again;
* the weight classes with torchao's safetensors allow-lists (diffusers ``save_pretrained`` /
  ``from_pretrained`` with safetensors) and with ``torch.serialization.add_safe_globals``
  (``torch.load(weights_only=True)``, used for diffusers' ``safe_serialization=False``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

import torch

from . import formats
from ._quiet import TORCHAO_IMPORT_NOISE, quiet_loggers
from .backends import BackendUnavailableError, get_backend

with quiet_loggers(*TORCHAO_IMPORT_NOISE):  # before .tensor, which imports torchao too
    from torchao.core.config import ALLOWED_AO_MODULES, AOBaseConfig
    from torchao.prototype.safetensors import safetensors_utils
    from torchao.quantization.transform_module import register_quantize_module_handler

    from .tensor import MXFP8Weight, NVFP4Weight, QuantizedWeight

__all__ = ["MXFP8Config", "NVFP4Config", "set_backend", "unsupported_reason"]

logger = logging.getLogger("dq_kernels")


def _check_backend(owner: str, name: str) -> None:
    if not isinstance(name, str) or not name:
        raise ValueError(f"{owner}: backend must be 'auto' or a registered backend name, got {name!r}")
    if name != "auto":
        try:
            get_backend(name)
        except ValueError as error:  # it lists the registered names
            raise ValueError(f"{owner}: backend: {error}") from None


@dataclass
class MXFP8Config(AOBaseConfig):
    """Quantize each ``nn.Linear`` weight to MXFP8 (an ``MXFP8Weight``); every call of the linear
    quantizes its activation to MXFP8 and runs the MXFP8 GEMM.

    backend: a registered backend name (``dq_kernels.available_backends()``) or "auto".
    scaling: "rceil" (the block scale is amax / 448 rounded up to a power of two, so nothing
        saturates) or "floor" (the OCP rule), for the weight and the activations.
    """

    fmt: ClassVar[formats.Format] = formats.MXFP8
    backend: str = "auto"
    scaling: str = "rceil"

    def __post_init__(self):
        _check_backend("MXFP8Config", self.backend)
        if self.scaling not in formats.SCALING_MODES:
            raise ValueError(f"MXFP8Config: scaling must be one of {formats.SCALING_MODES}, got {self.scaling!r}")


@dataclass
class NVFP4Config(AOBaseConfig):
    """Quantize each ``nn.Linear`` weight to NVFP4 (an ``NVFP4Weight``).

    backend: a registered backend name or "auto".
    weight_only: keep activations in high precision (W4A16) instead of quantizing them to NVFP4.
    activation_amax: a calibrated max |activation|; the activations then use the static tensor
        scale activation_amax / 2688 (448 * 6). None: each call computes its own (dynamic).
    """

    fmt: ClassVar[formats.Format] = formats.NVFP4
    backend: str = "auto"
    weight_only: bool = False
    activation_amax: float | None = None

    def __post_init__(self):
        _check_backend("NVFP4Config", self.backend)
        if not isinstance(self.weight_only, bool):
            raise TypeError(f"NVFP4Config: weight_only must be True or False, got {self.weight_only!r}")
        if self.activation_amax is not None:
            if self.weight_only:
                raise ValueError(
                    "NVFP4Config: activation_amax has no use with weight_only=True (activations stay unquantized)"
                )
            self.activation_amax = formats.check_activation_amax("NVFP4Config", self.activation_amax)


def unsupported_reason(module: torch.nn.Module, config: MXFP8Config | NVFP4Config) -> str | None:
    """Why ``config`` cannot quantize ``module`` (None when it can)."""
    if not isinstance(module, torch.nn.Linear):
        return f"it is a {type(module).__name__}, not a torch.nn.Linear"
    weight = module.weight
    if isinstance(weight, QuantizedWeight):
        return f"it is already quantized ({type(weight).__name__})"
    if weight.dtype not in formats.HIGH_PRECISION_DTYPES:
        return f"its weight is {weight.dtype}; bfloat16, float16 or float32 is needed"
    block = config.fmt.block_size
    if module.in_features % block:
        return f"in_features = {module.in_features} is not a multiple of {block} (the {config.fmt.name} block size)"
    return None


def _quantize_linear(module: torch.nn.Module, config, quantize_weight) -> torch.nn.Module:
    reason = unsupported_reason(module, config)
    if reason is not None:
        # torchao and diffusers hand a handler the module without its name, so describe it by shape
        layer = (
            f"a Linear layer {module.in_features} -> {module.out_features}"
            if isinstance(module, torch.nn.Linear)
            else f"a {type(module).__name__}"
        )
        logger.warning(
            "dq_kernels %s: leaving %s unquantized: %s. (To list skipped layers by name, quantize with "
            "dq_kernels.diffusers.quantize after loading, or load with "
            "quantization_config=dq_kernels.diffusers.load_config(...), which skips them silently.)",
            type(config).__name__, layer, reason,
        )  # fmt: skip
        return module
    module.weight = torch.nn.Parameter(quantize_weight(module.weight), requires_grad=False)
    return module


@register_quantize_module_handler(MXFP8Config)
def _quantize_mxfp8_linear(module: torch.nn.Module, config: MXFP8Config) -> torch.nn.Module:
    return _quantize_linear(module, config, lambda w: MXFP8Weight.from_float(w, config.scaling, config.backend))


@register_quantize_module_handler(NVFP4Config)
def _quantize_nvfp4_linear(module: torch.nn.Module, config: NVFP4Config) -> torch.nn.Module:
    return _quantize_linear(
        module,
        config,
        lambda w: NVFP4Weight.from_float(w, config.backend, config.weight_only, config.activation_amax),
    )


def set_backend(model: torch.nn.Module, name: str) -> int:
    """Run every dq_kernels-quantized weight of ``model`` on backend ``name`` (or "auto") from now
    on, without re-quantizing. A compiled model recompiles on its next call. Returns the number of
    weights changed; raises ValueError for an unknown name or a model with no quantized weight, and
    BackendUnavailableError for a backend that cannot run on the weights' device. (A weight's
    backend is a preference: a checkpoint saved with a backend this machine lacks runs on auto's
    choice, with one warning.)"""
    _check_backend("set_backend", name)
    weights = [p for p in model.parameters() if isinstance(p, QuantizedWeight)]
    if not weights:
        raise ValueError(f"set_backend: {type(model).__name__} has no dq_kernels-quantized weights")
    if name != "auto":
        backend = get_backend(name)
        for device in {w.device for w in weights}:
            reason = backend.spec.device_reason(device) or (backend.availability_on(device)[1] or None)
            if reason:
                raise BackendUnavailableError(f"set_backend: backend {name!r} cannot run on {device}: {reason}")
    for weight in weights:
        weight.backend = name
    return len(weights)


# Registrations (see the module docstring).
ALLOWED_AO_MODULES.add(__name__)
for _cls in (MXFP8Weight, NVFP4Weight):
    safetensors_utils.ALLOWED_CLASSES[_cls.__name__] = _cls
    safetensors_utils.ALLOWED_TENSORS_SUBCLASSES.append(_cls.__name__)
torch.serialization.add_safe_globals([MXFP8Weight, NVFP4Weight])
