"""The native CUDA library ``libdq_kernels_native.so``, called through ctypes.

This is the only module that loads the library, and it does so lazily: importing it touches neither
the library nor CUDA. The first call to any function below loads the library once (``_reset()``
forgets the result, for tests). The library is torch-free behind the C ABI of ``csrc/dq_kernels.h``;
these wrappers pass it raw device pointers and torch's current CUDA stream, so they neither
synchronize nor allocate and are safe inside CUDA-graph capture.

Set ``DQ_KERNELS_DISABLE_NATIVE=1`` to ignore the library (``status()`` then reports it disabled).
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["LIBRARY_PATH", "status", "build_info", "supports_device", "dequantize_mxfp8", "dequantize_nvfp4"]

LIBRARY_PATH = Path(__file__).with_name("libdq_kernels_native.so")
DISABLE_ENV = "DQ_KERNELS_DISABLE_NATIVE"


@dataclass(frozen=True)
class _Native:
    lib: ctypes.CDLL | None  # None when unavailable
    info: dict | None  # parsed dq_build_info()
    reason: str  # what status() reports


@functools.cache
def _library() -> _Native:
    if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
        return _Native(None, None, f"disabled by the environment variable {DISABLE_ENV}={os.environ[DISABLE_ENV]}")
    if not LIBRARY_PATH.is_file():
        return _Native(
            None,
            None,
            f"not built: there is no {LIBRARY_PATH.name} in {LIBRARY_PATH.parent} (the package was installed "
            "without nvcc or with DQ_KERNELS_BUILD_CUDA=0)",
        )
    try:
        lib = ctypes.CDLL(str(LIBRARY_PATH))
    except OSError as e:
        return _Native(None, None, f"failed to load {LIBRARY_PATH}: {e}")
    try:
        _declare_functions(lib)
        info = json.loads(lib.dq_build_info().decode())
    except (AttributeError, ValueError) as e:  # a missing function or bad build info: a stale library
        return _Native(None, None, f"{LIBRARY_PATH} does not match this package (reinstall dq_kernels): {e}")
    cuda_version = f"{info['cuda_version'] // 1000}.{info['cuda_version'] % 1000 // 10}"
    return _Native(lib, info, f"loaded {LIBRARY_PATH}, built for {';'.join(info['archs'])} with CUDA {cuda_version}")


def _declare_functions(lib: ctypes.CDLL) -> None:
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.dq_dequantize_mxfp8.argtypes = [p, p, p, i64, i64, i32, p]
    lib.dq_dequantize_mxfp8.restype = i32
    lib.dq_dequantize_nvfp4.argtypes = [p, p, p, p, i64, i64, i32, p]
    lib.dq_dequantize_nvfp4.restype = i32
    lib.dq_build_info.argtypes = []
    lib.dq_build_info.restype = ctypes.c_char_p
    lib.dq_error_string.argtypes = [i32]
    lib.dq_error_string.restype = ctypes.c_char_p


def _reset() -> None:
    """Forget the loaded library (or the reason it is unavailable); the next call looks again."""
    _library.cache_clear()


def status() -> tuple[bool, str]:
    """(True, "loaded <path>, built for <archs> with CUDA <version>") or (False, why it is unavailable)."""
    native = _library()
    return native.lib is not None, native.reason


def build_info() -> dict | None:
    """The library's dq_build_info() as a dict, or None when it is unavailable.

    Keys: "version", "cuda_version" (CUDART_VERSION, e.g. 13000), "archs" (e.g. ["90a", "100a"]),
    "families" (kernel family -> archs compiled), "skipped" (list of {"family", "arch", "why"}).
    """
    return _library().info


def _arch_runs_on(arch: str, capability: tuple[int, int]) -> bool:
    """Whether device code built for ``arch`` ("90a", "100a", "100f", "89") runs on a GPU of
    ``capability`` (major, minor). The library embeds cubins only (no PTX to JIT): "a" code runs on
    exactly its capability; "f" and plain code on the same major and a minor at least as high."""
    major, minor = divmod(int(arch.rstrip("af")), 10)
    if arch.endswith("a"):
        return capability == (major, minor)
    return capability[0] == major and capability[1] >= minor


def supports_device(device: torch.device | str | int, family: str = "dequantize") -> tuple[bool, str]:
    """(True, why) if the library is available and has ``family`` code for this CUDA device, else
    (False, why not). Queries the device's compute capability (initializes CUDA)."""
    import torch

    device = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
    if device.type != "cuda":
        return False, f"{device} is not a CUDA device"
    native = _library()
    if native.lib is None:
        return False, native.reason
    capability = torch.cuda.get_device_capability(device)
    archs = native.info["families"].get(family, [])
    name = f"sm_{capability[0]}{capability[1]}"
    if any(_arch_runs_on(arch, capability) for arch in archs):
        return True, f"{family} is built for {';'.join(archs)}, which covers {name}"
    return False, (
        f"{family} is built for {';'.join(archs) or 'no arch'} and none of it runs on {device} ({name}); "
        f"rebuild with DQ_KERNELS_CUDA_ARCHS including {capability[0]}{capability[1]}a"
    )


def _check_operands(
    fn: str, tensors: dict[str, torch.Tensor], out: torch.Tensor, shape: tuple[int, int], alignments: dict[str, int]
) -> tuple[ctypes.CDLL, int]:
    """(the loaded library, the out_dtype code of ``out``), after checking that every tensor is a
    contiguous CUDA tensor on out's device, ``out`` has ``shape`` and an output dtype, and each named
    tensor's data pointer has its alignment in bytes."""
    import torch

    native = _library()
    if native.lib is None:
        raise RuntimeError(f"dq_kernels.native.{fn}: the native library is unavailable: {native.reason}")
    for name, t in tensors.items():
        if t.device.type != "cuda" or t.device != out.device:
            raise ValueError(
                f"dq_kernels.native.{fn}: {name} is on {t.device}, out on {out.device}: all must be on one CUDA device"
            )
        if not t.is_contiguous():
            raise ValueError(f"dq_kernels.native.{fn}: {name} must be contiguous, got strides {t.stride()}")
    if tuple(out.shape) != shape:
        raise ValueError(f"dq_kernels.native.{fn}: out must have shape {shape}, got {tuple(out.shape)}")
    codes = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}  # DQ_FLOAT32, DQ_BFLOAT16, DQ_FLOAT16
    if out.dtype not in codes:
        raise ValueError(f"dq_kernels.native.{fn}: out must be float32, bfloat16 or float16, got {out.dtype}")
    for name, alignment in alignments.items():
        if tensors[name].data_ptr() % alignment != 0:
            raise ValueError(f"dq_kernels.native.{fn}: {name}.data_ptr() must be {alignment}-byte aligned")
    return native.lib, codes[out.dtype]


def _check_scales(fn: str, s: torch.Tensor, rows: int, scale_cols: int) -> None:
    """The swizzled scales must be round_up(rows, 128) * round_up(scale_cols, 4) bytes."""
    expected = (rows + 127) // 128 * 128 * ((scale_cols + 3) // 4 * 4)
    if s.element_size() != 1 or s.numel() != expected:
        raise ValueError(
            f"dq_kernels.native.{fn}: s must hold {expected} one-byte scales in the 128x4 swizzled layout, "
            f"got {s.numel()} of {s.dtype}"
        )


def _launch(fn: str, entry_point, device: torch.device, *args) -> None:
    """Call a dq_dequantize_* entry point on ``device``'s current stream; raise on a nonzero code."""
    import torch

    with torch.cuda.device(device):
        stream = torch.cuda.current_stream(device).cuda_stream
        code = entry_point(*args, stream)
    if code != 0:
        message = _library().lib.dq_error_string(code).decode()
        raise RuntimeError(f"dq_kernels.native.{fn}: {entry_point.__name__} returned {code}: {message}")


def dequantize_mxfp8(q: torch.Tensor, s: torch.Tensor, out: torch.Tensor) -> None:
    """Decode MXFP8 into ``out`` with the native kernel (bit-identical to ``formats.dequantize_mxfp8``).

    q: float8_e4m3fn (or uint8) [M, K], K % 32 == 0, 16-byte aligned; s: uint8 E8M0 scales in the
    128x4 swizzled layout (round_up(M, 128) * round_up(K / 32, 4) elements); out: [M, K] float32,
    bfloat16 or float16, 16-byte aligned. All contiguous, on one CUDA device. Enqueued on the
    current stream; returns without synchronizing.
    """
    fn = "dequantize_mxfp8"
    m, k = q.shape
    lib, code = _check_operands(fn, {"q": q, "s": s, "out": out}, out, (m, k), {"q": 16, "out": 16})
    _check_scales(fn, s, m, k // 32)
    _launch(fn, lib.dq_dequantize_mxfp8, out.device, q.data_ptr(), s.data_ptr(), out.data_ptr(), m, k, code)


def dequantize_nvfp4(q: torch.Tensor, s: torch.Tensor, tensor_scale: torch.Tensor, out: torch.Tensor) -> None:
    """Decode NVFP4 into ``out`` with the native kernel (bit-identical to ``formats.dequantize_nvfp4``).

    q: uint8 [M, K / 2] (element 2i in the low nibble), K % 16 == 0, 8-byte aligned; s:
    float8_e4m3fn scales in the 128x4 swizzled layout (round_up(M, 128) * round_up(K / 16, 4)
    elements); tensor_scale: float32 with one element; out: [M, K] float32, bfloat16 or float16,
    16-byte aligned. All contiguous, on one CUDA device. Enqueued on the current stream; returns
    without synchronizing.
    """
    import torch

    fn = "dequantize_nvfp4"
    m, k = q.shape[0], q.shape[1] * 2
    tensors = {"q": q, "s": s, "tensor_scale": tensor_scale, "out": out}
    lib, code = _check_operands(fn, tensors, out, (m, k), {"q": 8, "out": 16})
    _check_scales(fn, s, m, k // 16)
    if tensor_scale.dtype != torch.float32 or tensor_scale.numel() != 1:
        raise ValueError(
            f"dq_kernels.native.{fn}: tensor_scale must be one float32, "
            f"got {tensor_scale.dtype} of shape {tuple(tensor_scale.shape)}"
        )
    args = (q.data_ptr(), s.data_ptr(), tensor_scale.data_ptr(), out.data_ptr(), m, k, code)
    _launch(fn, lib.dq_dequantize_nvfp4, out.device, *args)
