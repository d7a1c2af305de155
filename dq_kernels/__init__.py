"""dq_kernels: MXFP8 and NVFP4 GEMM kernels as torch custom ops.

Public API: the formats and reference codecs (``dq_kernels.formats``), the custom ops and their
Python wrappers (quantize, dequantize, mm), the backend registry (your own backends included:
``Backend``, ``BackendSpec``, ``register_backend``, ``load_plugins``; docs/own-backend.md), the
TorchAO weight subclasses and configs, and the Diffusers presets (``dq_kernels.diffusers``).

Importing the package never touches the GPU, never loads the native library and does not import
torchao (whose import queries CUDA and takes seconds). The configs, weight classes and presets load
on first use (``dq.MXFP8Config``, ``dq.diffusers``, ...). ``import dq_kernels`` is enough to load a
saved quantized checkpoint: it adds ``dq_kernels.config`` to torchao's
``ALLOWED_AO_MODULES`` (now if torchao is already imported, else as soon as it is), so that
torchao's ``config_from_dict`` imports that module, which registers the rest, when a saved
``quantization_config`` names one of our configs.
"""

import importlib
import importlib.abc
import importlib.util
import sys

from . import formats
from .backends import (
    Backend,
    BackendSpec,
    BackendUnavailableError,
    available_backends,
    get_backend,
    register_backend,
    unregister_backend,
    use_backend,
)
from .formats import FORMATS, MXFP8, NVFP4, Format, from_blocked, to_blocked
from .ops import (
    dequantize_mxfp8,
    dequantize_nvfp4,
    mxfp8_linear,
    mxfp8_mm,
    mxfp8_mm_decoded,
    nvfp4_linear,
    nvfp4_mm,
    nvfp4_mm_decoded,
    nvfp4_weight_only_mm,
    quantize_dequantize_mxfp8,
    quantize_dequantize_nvfp4,
    quantize_mxfp8,
    quantize_nvfp4,
)
from .plugins import PluginError, load_plugins

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
    "quantize_dequantize_mxfp8",
    "quantize_dequantize_nvfp4",
    "dequantize_mxfp8",
    "dequantize_nvfp4",
    "mxfp8_mm",
    "nvfp4_mm",
    "nvfp4_weight_only_mm",
    "mxfp8_linear",
    "nvfp4_linear",
    "mxfp8_mm_decoded",
    "nvfp4_mm_decoded",
    "available_backends",
    "get_backend",
    "use_backend",
    "BackendUnavailableError",
    "Backend",
    "BackendSpec",
    "register_backend",
    "unregister_backend",
    "load_plugins",
    "PluginError",
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
    importlib.import_module(".config", __name__)  # first: it imports torchao quietly and registers the classes
    module = importlib.import_module(f".{_LAZY[name]}", __name__)
    return module if name == "diffusers" else getattr(module, name)


_TORCHAO_CONFIG = "torchao.core.config"


def _allow_our_configs(module) -> None:
    module.ALLOWED_AO_MODULES.add(f"{__name__}.config")


class _AllowOurConfigsOnImport(importlib.abc.MetaPathFinder):
    """Runs ``_allow_our_configs`` right after ``torchao.core.config`` is imported, then leaves
    ``sys.meta_path``."""

    def find_spec(self, name, path, target=None):
        if name != _TORCHAO_CONFIG:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)  # the finders that follow this one
        exec_module = spec.loader.exec_module

        def exec_and_allow(module):
            exec_module(module)
            _allow_our_configs(module)

        spec.loader.exec_module = exec_and_allow
        return spec


if _TORCHAO_CONFIG in sys.modules:
    _allow_our_configs(sys.modules[_TORCHAO_CONFIG])
else:
    sys.meta_path.insert(0, _AllowOurConfigsOnImport())
