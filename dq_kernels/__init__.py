"""dq_kernels: MXFP8 and NVFP4 GEMM kernels as torch custom ops.

Public API: the formats and reference codecs (``dq_kernels.formats``), the custom ops and their
Python wrappers (quantize, dequantize, mm), the backend registry, the TorchAO weight subclasses and
configs, and the Diffusers presets (``dq_kernels.diffusers``).

Importing the package never touches the GPU and never loads the native library. The configs, weight
classes and presets load on first use (``dq.MXFP8Config``, ``dq.diffusers``, ...): importing
``dq_kernels.config`` registers them with torchao and its safetensors allow-list, and torchao's
safetensors support initializes CUDA when it is imported. So before loading a saved quantized
checkpoint, touch one of them or ``import dq_kernels.config``.
"""

import importlib

from . import formats
from .backends import (
    BackendUnavailableError,
    available_backends,
    get_backend,
    use_backend,
)
from .formats import FORMATS, MXFP8, NVFP4, Format, from_blocked, to_blocked
from .ops import (
    dequantize_mxfp8,
    dequantize_nvfp4,
    mxfp8_linear,
    mxfp8_mm,
    nvfp4_linear,
    nvfp4_mm,
    nvfp4_weight_only_mm,
    quantize_mxfp8,
    quantize_nvfp4,
)

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "formats",
    "Format",
    "FORMATS",
    "MXFP8",
    "NVFP4",
    "to_blocked",
    "from_blocked",
    "quantize_mxfp8",
    "quantize_nvfp4",
    "dequantize_mxfp8",
    "dequantize_nvfp4",
    "mxfp8_mm",
    "nvfp4_mm",
    "nvfp4_weight_only_mm",
    "mxfp8_linear",
    "nvfp4_linear",
    "available_backends",
    "get_backend",
    "use_backend",
    "BackendUnavailableError",
    "MXFP8Config",
    "NVFP4Config",
    "set_backend",
    "QuantizedWeight",
    "MXFP8Weight",
    "NVFP4Weight",
    "diffusers",
]

# name -> the submodule that defines it, imported on first access (see the module docstring)
_LAZY = {
    "MXFP8Config": "config",
    "NVFP4Config": "config",
    "set_backend": "config",
    "QuantizedWeight": "tensor",
    "MXFP8Weight": "tensor",
    "NVFP4Weight": "tensor",
    "diffusers": "diffusers",
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'dq_kernels' has no attribute {name!r}")
    module = importlib.import_module(f".{_LAZY[name]}", __name__)
    return module if name == "diffusers" else getattr(module, name)
