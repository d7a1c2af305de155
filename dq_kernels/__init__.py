"""dq_kernels: MXFP8 and NVFP4 GEMM kernels as torch custom ops.

Public API: the formats and reference codecs (``dq_kernels.formats``), the custom ops and their
Python wrappers (quantize, dequantize, mm), the backend registry, the TorchAO weight subclasses and
configs, and the Diffusers presets (``dq_kernels.diffusers``). Importing the package never touches
the GPU and never loads the native library. It imports torchao: the configs register themselves with
torchao and the serialization allow-lists on import, so saved quantized models load again.
"""

from . import diffusers, formats
from .backends import (
    BackendUnavailableError,
    available_backends,
    get_backend,
    use_backend,
)
from .config import MXFP8Config, NVFP4Config, set_backend
from .formats import FORMATS, MXFP8, NVFP4, Format, from_blocked, to_blocked
from .ops import (
    dequantize_mxfp8,
    dequantize_nvfp4,
    mxfp8_mm,
    nvfp4_mm,
    quantize_mxfp8,
    quantize_nvfp4,
)
from .tensor import MXFP8Weight, NVFP4Weight, QuantizedWeight

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
