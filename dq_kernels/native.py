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
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import torch

__all__ = [
    "LIBRARY_PATH",
    "SM90_FAMILY",
    "SM100_FAMILY",
    "status",
    "build_info",
    "supports_device",
    "dequantize_mxfp8",
    "dequantize_nvfp4",
    "sm90_mxfp8_skinny_mm",
    "sm90_nvfp4_skinny_mm",
    "sm90_nvfp4_w4a16_skinny_mm",
    "sm90_mxfp8_skinny_linear",
    "sm90_nvfp4_skinny_linear",
    "sm90_mxfp8_mixed_mm",
    "sm90_nvfp4_mixed_mm",
    "sm90_mixed_plan",
    "sm90_mxfp8_linear",
    "sm90_nvfp4_linear",
    "sm90_linear_launcher",
    "SM90_LINEAR_KERNELS",
    "Sm90MixedPlan",
    "SM90_SKINNY_MAX_M",
    "sm100_mxfp8_mm",
    "sm100_nvfp4_mm",
    "sm100_mm_plan",
    "sm100_mm_prepare",
    "Sm100Plan",
    "quantize_mxfp8",
    "quantize_dequantize_mxfp8",
    "quantize_nvfp4",
    "quantize_dequantize_nvfp4",
    "CAST_FAMILY",
    "cast_layout_ok",
    "decoded_linear_status",
    "decoded_mxfp8_linear",
    "decoded_mxfp8_linear_launcher",
]

LIBRARY_PATH = Path(__file__).with_name("libdq_kernels_native.so")
ABI_VERSION = 6  # DQ_ABI_VERSION of csrc/dq_kernels.h: a library built from other headers is refused
DISABLE_ENV = "DQ_KERNELS_DISABLE_NATIVE"
CAST_FAMILY = "cast"  # the kernel family of the dq_quantize_* functions (CMakeLists.txt), built for every arch
SM90_FAMILY = "sm90_gemm"  # the kernel family of the dq_sm90_* functions (CMakeLists.txt)
SM100_FAMILY = "sm100_gemm"  # the kernel family of the dq_sm100_* functions
SM90_SKINNY_MAX_M = 64  # the largest M of the dq_sm90_*_skinny_mm and _skinny_linear functions
# DQ_SM100_CONFIG_* of dq_kernels.h: the config argument of the sm100 GEMMs, and the name of each
# resolved config (the tile of output one CTA or CTA pair computes).
SM100_CONFIGS = {"auto": 0, "1sm": 1, "2sm": 2}
SM100_CONFIG_NAMES = {1: "1sm_128x128", 2: "2sm_256x128"}
SCALINGS = {"rceil": 0, "floor": 1}  # DQ_SCALING_* of dq_kernels.h: the MXFP8 casts' scaling argument
NVFP4_CAST_SCRATCH_BYTES = 4096  # DQ_NVFP4_CAST_SCRATCH_BYTES: the dynamic tensor scale's amax partials
# DQ_SM90_LINEAR_* of dq_kernels.h: the kernels a Linear in one call (sm90_*_linear) runs after its cast.
SM90_LINEAR_KERNELS = {"quantizing_skinny": 0, "skinny": 1, "mixed": 2}
_FORMAT_CODES = {"mxfp8": 0, "nvfp4": 1}  # DQ_FORMAT_*


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
        abi = lib.dq_abi_version()
    except AttributeError:
        abi = 1  # the libraries before the ABI version existed
    if abi != ABI_VERSION:
        return _Native(
            None,
            None,
            f"{LIBRARY_PATH} is a stale build: its C ABI is version {abi}, this package calls version "
            f"{ABI_VERSION} (reinstall dq_kernels to rebuild the library)",
        )
    try:
        _declare_functions(lib)
        info = json.loads(lib.dq_build_info().decode())
        if info["families"].get(SM90_FAMILY):
            _declare_sm90_functions(lib)
        if info["families"].get(SM100_FAMILY):
            _declare_sm100_functions(lib)
    except (AttributeError, ValueError) as e:  # a missing function or bad build info: a stale library
        return _Native(None, None, f"{LIBRARY_PATH} does not match this package (reinstall dq_kernels): {e}")
    driver = _driver_version()
    if driver is not None and driver // 1000 < info["cuda_version"] // 1000:
        # Every call would fail with cudaErrorInsufficientDriver: refuse the library (build info kept
        # for status reports), so the reference backend decodes with torch instead.
        return _Native(None, info, (
            f"the CUDA driver supports CUDA {_version_name(driver)} only, but {LIBRARY_PATH.name} links the CUDA "
            f"{_version_name(info['cuda_version'])} runtime statically, which needs a driver for CUDA "
            f"{info['cuda_version'] // 1000}.0 or newer: update the NVIDIA driver, or rebuild dq_kernels with a "
            "CUDA toolkit no newer than the driver"
        ))  # fmt: skip
    built_with = _version_name(info["cuda_version"])
    reason = f"loaded {LIBRARY_PATH}, built for {';'.join(info['archs'])} with CUDA {built_with}"
    if driver is not None:
        reason += f", driver for CUDA {_version_name(driver)}"
    return _Native(lib, info, reason)


def _version_name(version: int) -> str:
    """A CUDA version number as CUDA reports it (13000, 12080) -> "13.0", "12.8"."""
    return f"{version // 1000}.{version % 1000 // 10}"


def _driver_version() -> int | None:
    """The CUDA version the installed driver supports (cuDriverGetVersion, e.g. 12080), or None when
    there is no driver (no libcuda.so.1). Asks the driver library only: no device is touched and
    CUDA is not initialized."""
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    version = ctypes.c_int(0)
    if libcuda.cuDriverGetVersion(ctypes.byref(version)) != 0:
        return None
    return version.value


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
    # the casts (csrc/cast.cu)
    lib.dq_quantize_mxfp8.argtypes = [p, i32, i64, i64, i64, i32, p, p, p]
    lib.dq_quantize_dequantize_mxfp8.argtypes = [p, i32, i64, i64, i64, i32, p, p]
    lib.dq_quantize_nvfp4.argtypes = [p, i32, i64, i64, i64, p, p, p, p, p, p]
    lib.dq_quantize_dequantize_nvfp4.argtypes = [p, i32, i64, i64, i64, p, p, p, p, p]
    # the MXFP8 Linear through cuBLASLt (csrc/decoded_linear.cpp)
    lib.dq_decoded_linear_available.argtypes = []
    lib.dq_decoded_linear_workspace_bytes.argtypes = [i64, i64, i64, p]
    lib.dq_decoded_mxfp8_linear.argtypes = [p, i32, i64, p, p, p, i32, p, i64, i64, i64, i32, p, i64, p]
    for fn in (lib.dq_quantize_mxfp8, lib.dq_quantize_dequantize_mxfp8, lib.dq_quantize_nvfp4,
               lib.dq_quantize_dequantize_nvfp4, lib.dq_decoded_linear_available,
               lib.dq_decoded_linear_workspace_bytes, lib.dq_decoded_mxfp8_linear):
        fn.restype = i32


def _declare_sm90_functions(lib: ctypes.CDLL) -> None:
    """The dq_sm90_* functions, present when the sm90_gemm family was built."""
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    # (a bias is a pointer and its dtype code)
    lib.dq_sm90_mxfp8_skinny_mm.argtypes = [p, p, p, p, p, i32, p, i64, i64, i64, i32, p]
    lib.dq_sm90_nvfp4_skinny_mm.argtypes = [p, p, p, p, p, p, p, i32, p, i64, i64, i64, i32, p]
    lib.dq_sm90_nvfp4_w4a16_skinny_mm.argtypes = [p, i32, p, p, p, p, i32, p, i64, i64, i64, i32, p]
    lib.dq_sm90_mxfp8_skinny_linear.argtypes = [p, i32, p, p, p, i32, p, i64, i64, i64, i32, p]
    lib.dq_sm90_nvfp4_skinny_linear.argtypes = [p, i32, p, p, p, p, p, i32, p, i64, i64, i64, p]
    lib.dq_sm90_mxfp8_mixed_mm.argtypes = [p, p, p, p, i32, p, i64, i64, i64, i32, i32, p, i64, p]
    lib.dq_sm90_nvfp4_mixed_mm.argtypes = [p, i32, p, p, p, p, p, i32, p, i64, i64, i64, i32, i32, p, i64, p]
    lib.dq_sm90_linear_workspace_bytes.argtypes = [i32, i32, i64, i64, i64, p]
    lib.dq_sm90_mxfp8_linear.argtypes = [p, i32, i64, p, p, p, i32, p, i64, i64, i64, i32, i32, p, i64, p]
    lib.dq_sm90_nvfp4_linear.argtypes = [p, i32, i64, p, p, p, p, p, i32, p, i64, i64, i64, i32, p, i64, p]
    lib.dq_sm90_mixed_mm_plan.argtypes = [i64, i64, i64, i32, p, p, p, p, p]
    for fn in (lib.dq_sm90_mxfp8_skinny_mm, lib.dq_sm90_nvfp4_skinny_mm,
               lib.dq_sm90_nvfp4_w4a16_skinny_mm, lib.dq_sm90_mxfp8_skinny_linear, lib.dq_sm90_nvfp4_skinny_linear,
               lib.dq_sm90_mxfp8_mixed_mm, lib.dq_sm90_nvfp4_mixed_mm, lib.dq_sm90_mixed_mm_plan,
               lib.dq_sm90_linear_workspace_bytes, lib.dq_sm90_mxfp8_linear, lib.dq_sm90_nvfp4_linear):
        fn.restype = i32


def _declare_sm100_functions(lib: ctypes.CDLL) -> None:
    """The dq_sm100_* functions, present when the sm100_gemm family was built."""
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.dq_sm100_mxfp8_mm.argtypes = [p, p, p, p, p, p, i64, i64, i64, i32, i32, p]
    lib.dq_sm100_nvfp4_mm.argtypes = [p, p, p, p, p, p, p, p, i64, i64, i64, i32, i32, p]
    lib.dq_sm100_mxfp8_mm_prepare.argtypes = [p, p, p, p, p, p, i64, i64, i64, i32, i32]
    lib.dq_sm100_nvfp4_mm_prepare.argtypes = [p, p, p, p, p, p, p, p, i64, i64, i64, i32, i32]
    for plan in (lib.dq_sm100_mxfp8_mm_plan, lib.dq_sm100_nvfp4_mm_plan):
        plan.argtypes = [i64, i64, i64, i32, i32, p, p, p]
    for fn in (lib.dq_sm100_mxfp8_mm, lib.dq_sm100_nvfp4_mm, lib.dq_sm100_mxfp8_mm_prepare,
               lib.dq_sm100_nvfp4_mm_prepare, lib.dq_sm100_mxfp8_mm_plan, lib.dq_sm100_nvfp4_mm_plan):
        fn.restype = i32


def _reset() -> None:
    """Forget the loaded library (or the reason it is unavailable); the next call looks again."""
    _library.cache_clear()
    _family_runs_on.cache_clear()
    _plan_on.cache_clear()
    _linear_workspace_bytes.cache_clear()


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
    (False, why not). Queries the device's compute capability (initializes CUDA) the first time for
    each (device, family); the answer is kept until the library is reloaded."""
    import torch

    device = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
    if device.type != "cuda":
        return False, f"{device} is not a CUDA device"
    return _family_runs_on(device.index if device.index is not None else torch.cuda.current_device(), family)


@functools.cache
def _family_runs_on(device_index: int, family: str) -> tuple[bool, str]:
    import torch

    device = torch.device("cuda", device_index)
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


_DTYPE_CODES: dict = {}  # torch dtype -> DQ_FLOAT32 / DQ_BFLOAT16 / DQ_FLOAT16, filled on first use


def _dtype_code(dtype) -> int:
    if not _DTYPE_CODES:
        import torch

        _DTYPE_CODES.update({torch.float32: 0, torch.bfloat16: 1, torch.float16: 2})
    return _DTYPE_CODES[dtype]


def _check_operands(
    fn: str, tensors: dict[str, torch.Tensor], out: torch.Tensor, shape: tuple[int, int], alignments: dict[str, int],
    out_dtypes: tuple[torch.dtype, ...] | None = None,
) -> tuple[ctypes.CDLL, int]:
    """(the loaded library, the out_dtype code of ``out``), after checking that every tensor is a
    contiguous CUDA tensor on out's device, ``out`` has ``shape`` and one of ``out_dtypes`` (default:
    float32, bfloat16, float16), and each named tensor's data pointer has its alignment in bytes."""
    import torch

    codes = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}  # DQ_FLOAT32, DQ_BFLOAT16, DQ_FLOAT16
    if out.dtype not in (out_dtypes or codes):
        names = [str(d).removeprefix("torch.") for d in (out_dtypes or codes)]
        names = " or ".join([", ".join(names[:-1]), names[-1]] if len(names) > 2 else names)
        raise ValueError(f"dq_kernels.native.{fn}: out must be {names}, got {out.dtype}")
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
    for name, alignment in alignments.items():
        if tensors[name].data_ptr() % alignment != 0:
            raise ValueError(f"dq_kernels.native.{fn}: {name}.data_ptr() must be {alignment}-byte aligned")
    return native.lib, codes[out.dtype]


def _scale_shape(rows: int, scale_cols: int) -> tuple[int, int]:
    """[round_up(rows, 128), round_up(scale_cols, 4)]: the shape of swizzled scales."""
    return (rows + 127) // 128 * 128, (scale_cols + 3) // 4 * 4


def _check_scales(fn: str, s: torch.Tensor, rows: int, scale_cols: int) -> None:
    """The swizzled scales must be round_up(rows, 128) * round_up(scale_cols, 4) bytes."""
    padded_rows, padded_cols = _scale_shape(rows, scale_cols)
    expected = padded_rows * padded_cols
    if s.element_size() != 1 or s.numel() != expected:
        raise ValueError(
            f"dq_kernels.native.{fn}: s must hold {expected} one-byte scales in the 128x4 swizzled layout, "
            f"got {s.numel()} of {s.dtype}"
        )


def current_raw_stream(index: int) -> int:
    """The handle of device ``index``'s current CUDA stream. torch's raw-stream query (the one
    Triton's launcher uses) where it exists: a Stream object costs several microseconds per call."""
    return _raw_stream_query()(index)


@functools.cache
def _raw_stream_query() -> Callable[[int], int]:
    """``current_raw_stream``'s query, looked up once (the launchers bind it)."""
    import torch

    raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)
    return raw if raw is not None else lambda index: torch.cuda.current_stream(index).cuda_stream


def _launch(fn: str, entry_point, device: torch.device, *args, stream: int | None = None) -> None:
    """Call a library entry point on ``device``'s current stream (``stream``: its handle, where the
    caller has it already); raise on a nonzero code. The entry points launch on the current device,
    so another device is made current around the call. ``device`` holds the operands, so CUDA is
    initialized: torch's raw current-device query does, without ``torch.cuda.current_device``'s
    Python lazy-init check."""
    import torch

    if stream is None:
        stream = current_raw_stream(device.index)
    if torch._C._cuda_getDevice() == device.index:
        code = entry_point(*args, stream)
    else:
        with torch.cuda.device(device):
            code = entry_point(*args, stream)
    if code != 0:
        message = _library().lib.dq_error_string(code).decode()
        raise RuntimeError(f"dq_kernels.native.{fn}: {entry_point.__name__} returned {code}: {message}")


def dequantize_mxfp8(q: torch.Tensor, s: torch.Tensor, out: torch.Tensor, *, checked: bool = True) -> None:
    """Decode MXFP8 into ``out`` with the native kernel (bit-identical to ``formats.dequantize_mxfp8``).

    q: float8_e4m3fn (or uint8) [M, K], K % 32 == 0, 16-byte aligned; s: uint8 E8M0 scales in the
    128x4 swizzled layout (round_up(M, 128) * round_up(K / 32, 4) elements); out: [M, K] float32,
    bfloat16 or float16, 16-byte aligned. All contiguous, on one CUDA device. Enqueued on the
    current stream; returns without synchronizing. ``checked=False`` skips the argument checks, for
    callers that guarantee all of the above (the backends, on operands the ops checked).
    """
    fn = "dequantize_mxfp8"
    m, k = q.shape
    if checked:
        lib, code = _check_operands(fn, {"q": q, "s": s, "out": out}, out, (m, k), {"q": 16, "out": 16})
        _check_scales(fn, s, m, k // 32)
    else:
        lib, code = _library().lib, _dtype_code(out.dtype)
    _launch(fn, lib.dq_dequantize_mxfp8, out.device, q.data_ptr(), s.data_ptr(), out.data_ptr(), m, k, code)


def dequantize_nvfp4(
    q: torch.Tensor, s: torch.Tensor, tensor_scale: torch.Tensor | None, out: torch.Tensor, *, checked: bool = True
) -> None:
    """Decode NVFP4 into ``out`` with the native kernel (bit-identical to ``formats.dequantize_nvfp4``).

    q: uint8 [M, K / 2] (element 2i in the low nibble), K % 16 == 0, 8-byte aligned; s:
    float8_e4m3fn scales in the 128x4 swizzled layout (round_up(M, 128) * round_up(K / 16, 4)
    elements); tensor_scale: float32 with one element, or None for 1 (e2m1 x e4m3 alone); out:
    [M, K] float32, bfloat16 or float16, 16-byte aligned. All contiguous, on one CUDA device.
    Enqueued on the current stream; returns without synchronizing. ``checked`` as for
    ``dequantize_mxfp8``.
    """
    fn = "dequantize_nvfp4"
    m, k = q.shape[0], q.shape[1] * 2
    if checked:
        tensors = {"q": q, "s": s, "out": out} | ({} if tensor_scale is None else {"tensor_scale": tensor_scale})
        lib, code = _check_operands(fn, tensors, out, (m, k), {"q": 8, "out": 16})
        _check_scales(fn, s, m, k // 16)
        if tensor_scale is not None:
            _check_tensor_scales(fn, tensor_scale=tensor_scale)
    else:
        lib, code = _library().lib, _dtype_code(out.dtype)
    ts_ptr = None if tensor_scale is None else tensor_scale.data_ptr()
    args = (q.data_ptr(), s.data_ptr(), ts_ptr, out.data_ptr(), m, k, code)
    _launch(fn, lib.dq_dequantize_nvfp4, out.device, *args)


# ----------------------------------------------------------------------------------------------
# Activation casts: the cast family (csrc/cast.cu, every arch), bit-identical to formats.quantize_*
# on CUDA tensors. x is [M, K] with unit column stride, any row stride >= K, 16-byte aligned rows.
# ----------------------------------------------------------------------------------------------


def cast_layout_ok(x) -> bool:
    """Whether 2-D ``x`` [M, K] has the layout the casts read: unit column stride, row stride >= K,
    16-byte aligned rows (data_ptr and row stride in bytes multiples of 16)."""
    return (x.stride(1) == 1 and x.stride(0) >= x.shape[1] and x.data_ptr() % 16 == 0
            and (x.stride(0) * x.element_size()) % 16 == 0)


def _cast_args(fn: str, x: torch.Tensor, block: int, outputs: dict, scaling: str | None = None):
    """Checks a cast's input ``x`` (a 2-D bfloat16, float16 or float32 CUDA tensor, K a multiple of
    ``block``, unit column stride, 16-byte aligned rows), its ``scaling`` (None: no scaling
    argument) and ``outputs`` ({name: (tensor, shape, dtypes, alignment)}: contiguous, on x's
    device); returns (library, x's dtype code, M, K)."""
    import torch

    dtypes = (torch.float32, torch.bfloat16, torch.float16)
    if x.dim() != 2 or x.dtype not in dtypes:
        raise ValueError(f"dq_kernels.native.{fn}: x must be a 2-D float32, bfloat16 or float16 tensor, got {x.dtype} {tuple(x.shape)}")
    m, k = x.shape
    if m < 1 or k < block or k % block:
        raise ValueError(f"dq_kernels.native.{fn}: x [M, K] needs M >= 1 and K a positive multiple of {block}, got {tuple(x.shape)}")
    if not cast_layout_ok(x):
        raise ValueError(
            f"dq_kernels.native.{fn}: x must have unit column stride, a row stride >= K and 16-byte aligned rows "
            f"(data_ptr and row stride in bytes multiples of 16), got strides {x.stride()} (x.contiguous() has them)"
        )
    if scaling is not None and scaling not in SCALINGS:
        raise ValueError(f"dq_kernels.native.{fn}: scaling must be one of {tuple(SCALINGS)}, got {scaling!r}")
    if x.device.type != "cuda":
        raise ValueError(f"dq_kernels.native.{fn}: x is on {x.device}; the casts run on CUDA tensors")
    for name, (t, shape, allowed, alignment) in outputs.items():
        if t.device != x.device:
            raise ValueError(f"dq_kernels.native.{fn}: {name} is on {t.device}, x on {x.device}: both must be on one device")
        if tuple(t.shape) != shape or t.dtype not in allowed:
            names = " or ".join(str(d).removeprefix("torch.") for d in allowed)
            raise ValueError(f"dq_kernels.native.{fn}: {name} must be {names} of shape {shape}, got {t.dtype} {tuple(t.shape)}")
        if not t.is_contiguous() or t.data_ptr() % alignment:
            raise ValueError(f"dq_kernels.native.{fn}: {name} must be contiguous and {alignment}-byte aligned")
    native = _library()
    if native.lib is None:
        raise RuntimeError(f"dq_kernels.native.{fn}: the native library is unavailable: {native.reason}")
    return native.lib, _dtype_code(x.dtype), m, k


def quantize_mxfp8(x, scaling: str, q, s, *, checked: bool = True) -> None:
    """MXFP8 cast into q and s (``formats.quantize_mxfp8(x, scaling)`` bit for bit, on CUDA).

    x: [M, K] float32, bfloat16 or float16 (K % 32 == 0), unit column stride, any row stride >= K,
    16-byte aligned rows; scaling "rceil" or "floor"; q: float8_e4m3fn (or uint8) [M, K], 16-byte
    aligned; s: uint8 [round_up(M, 128), round_up(K / 32, 4)], the swizzled E8M0 scales, padding
    written as zeros. One pass over x, enqueued on the current stream. ``checked=False`` skips the
    argument checks, for callers that guarantee all of the above (the cutlass backend, after the
    ops' checks).
    """
    import torch

    fn = "quantize_mxfp8"
    if checked:
        m, k = x.shape if x.dim() == 2 else (0, 0)
        outputs = {"q": (q, (m, k), (torch.float8_e4m3fn, torch.uint8), 16),
                   "s": (s, _scale_shape(m, k // 32), (torch.uint8,), 1)}
        lib, x_code, m, k = _cast_args(fn, x, 32, outputs, scaling)
    else:
        lib, x_code, (m, k) = _library().lib, _dtype_code(x.dtype), x.shape
    args = (x.data_ptr(), x_code, x.stride(0), m, k, SCALINGS[scaling], q.data_ptr(), s.data_ptr())
    _launch(fn, lib.dq_quantize_mxfp8, x.device, *args)


def quantize_dequantize_mxfp8(x, scaling: str, out, *, checked: bool = True) -> None:
    """x rounded to MXFP8 and decoded into out, bfloat16 [M, K] (16-byte aligned): bit for bit
    ``formats.dequantize_mxfp8(*formats.quantize_mxfp8(x, scaling))`` on CUDA, in one pass that
    writes neither q nor s. x, scaling and ``checked`` as for ``quantize_mxfp8``.
    """
    import torch

    fn = "quantize_dequantize_mxfp8"
    if checked:
        lib, x_code, m, k = _cast_args(fn, x, 32, {"out": (out, tuple(x.shape), (torch.bfloat16,), 16)}, scaling)
    else:
        lib, x_code, (m, k) = _library().lib, _dtype_code(x.dtype), x.shape
    args = (x.data_ptr(), x_code, x.stride(0), m, k, SCALINGS[scaling], out.data_ptr())
    _launch(fn, lib.dq_quantize_dequantize_mxfp8, x.device, *args)


def _nvfp4_cast_args(fn, x, tensor_scale, outputs: dict, checked: bool):
    """Checks of the NVFP4 casts when ``checked`` (``outputs`` as for _cast_args, None unchecked;
    tensor_scale None or one float32 on x's device); returns (library, x's dtype code, M, K, tensor scale pointer, scratch), scratch
    a fresh buffer of NVFP4_CAST_SCRATCH_BYTES for the amax pass's partial maxima of a dynamic tensor
    scale (uninitialized: the cast zeroes nothing; unused for an x of at most 16384 elements, which
    has no amax pass; None for a given tensor scale)."""
    import torch

    if checked:
        if outputs["tensor_scale_out"][0].numel() != 1:
            raise ValueError(f"dq_kernels.native.{fn}: tensor_scale_out must hold one float32")
        if tensor_scale is not None:
            outputs = outputs | {"tensor_scale": (tensor_scale, tuple(tensor_scale.shape), (torch.float32,), 4)}
            if tensor_scale.numel() != 1:
                raise ValueError(f"dq_kernels.native.{fn}: tensor_scale must be one float32, got shape {tuple(tensor_scale.shape)}")
        lib, x_code, m, k = _cast_args(fn, x, 16, outputs)
    else:
        lib, x_code, (m, k) = _library().lib, _dtype_code(x.dtype), x.shape
    if tensor_scale is None:
        return lib, x_code, m, k, None, torch.empty(NVFP4_CAST_SCRATCH_BYTES, dtype=torch.uint8, device=x.device)
    return lib, x_code, m, k, tensor_scale.data_ptr(), None


def quantize_nvfp4(x, tensor_scale, q, s, tensor_scale_out, *, checked: bool = True) -> None:
    """NVFP4 cast into q, s and tensor_scale_out (``formats.quantize_nvfp4(x, tensor_scale)`` bit for
    bit on CUDA; the codes of NaN-scaled blocks, and of all blocks under a non-finite tensor scale,
    are unspecified there too).

    x: [M, K] as for ``quantize_mxfp8`` with K % 16 == 0; tensor_scale: one float32, or None for the
    dynamic amax(|x|) / 2688 (an amax pass over x first, none for an x of at most 16384 elements; its
    NVFP4_CAST_SCRATCH_BYTES of scratch come from torch's allocator); q: uint8 [M, K / 2], 8-byte
    aligned; s: float8_e4m3fn (or uint8) [round_up(M, 128), round_up(K / 16, 4)] swizzled, padding
    zeros; tensor_scale_out: float32, one element, always written. ``checked`` as for
    ``quantize_mxfp8``.
    """
    import torch

    fn = "quantize_nvfp4"
    outputs = None  # what the checks compare, built only when they run (the eager path skips them)
    if checked:
        m, k = x.shape if x.dim() == 2 else (0, 0)
        outputs = {"q": (q, (m, k // 2), (torch.uint8,), 8),
                   "s": (s, _scale_shape(m, k // 16), (torch.float8_e4m3fn, torch.uint8), 1),
                   "tensor_scale_out": (tensor_scale_out, tuple(tensor_scale_out.shape), (torch.float32,), 4)}
    lib, x_code, m, k, ts_ptr, scratch = _nvfp4_cast_args(fn, x, tensor_scale, outputs, checked)
    args = (x.data_ptr(), x_code, x.stride(0), m, k, ts_ptr, q.data_ptr(), s.data_ptr(), tensor_scale_out.data_ptr())
    _launch(fn, lib.dq_quantize_nvfp4, x.device, *args, None if scratch is None else scratch.data_ptr())


def quantize_dequantize_nvfp4(x, tensor_scale, out, tensor_scale_out, *, checked: bool = True) -> None:
    """x rounded to NVFP4 and decoded without its tensor scale into out, float16 [M, K] (16-byte
    aligned): e2m1 x block scale, bit for bit ``formats.dequantize_nvfp4(q, s, 1, float16)`` of
    ``formats.quantize_nvfp4(x, tensor_scale)`` on CUDA; the tensor scale goes to tensor_scale_out.
    x, tensor_scale and ``checked`` as for ``quantize_nvfp4``.
    """
    import torch

    fn = "quantize_dequantize_nvfp4"
    outputs = None if not checked else {
        "out": (out, tuple(x.shape), (torch.float16,), 16),
        "tensor_scale_out": (tensor_scale_out, tuple(tensor_scale_out.shape), (torch.float32,), 4)}
    lib, x_code, m, k, ts_ptr, scratch = _nvfp4_cast_args(fn, x, tensor_scale, outputs, checked)
    args = (x.data_ptr(), x_code, x.stride(0), m, k, ts_ptr, out.data_ptr(), tensor_scale_out.data_ptr())
    _launch(fn, lib.dq_quantize_dequantize_nvfp4, x.device, *args, None if scratch is None else scratch.data_ptr())


# ----------------------------------------------------------------------------------------------
# GEMMs: the sm90_gemm family (Hopper, sm_90a only) and the sm100_gemm family (CUTLASS block-scaled
# tcgen05 kernels, sm_100a only)
# ----------------------------------------------------------------------------------------------

_FAMILY_ARCH = {SM90_FAMILY: "90a", SM100_FAMILY: "100f"}  # the arch each family needs in DQ_KERNELS_CUDA_ARCHS
_SM100_OUT_CODES = {"float32": 0, "bfloat16": 1}  # DQ_FLOAT32, DQ_BFLOAT16 (no float16)


# ----------------------------------------------------------------------------------------------
# The MXFP8 Linear through a dense bfloat16 GEMM (csrc/decoded_linear.cpp, every arch): the cast,
# the weight decoded to bfloat16 and a cuBLASLt GEMM in one call, for the decode_cublas backend.
# ----------------------------------------------------------------------------------------------


def cublaslt_found() -> bool:
    """Whether the library found cuBLASLt (libcublasLt.so.13 or .12, the process's copy first:
    torch's CUDA build loads it); looked up once, when first asked."""
    lib = _library().lib
    return lib is not None and bool(lib.dq_decoded_linear_available())


def decoded_linear_status(capability: tuple[int, int]) -> tuple[bool, str]:
    """(True, why) if ``decoded_mxfp8_linear`` runs on a GPU of compute ``capability``: the library
    has its cast and dequantize code for it (the cast family, built for every arch it was asked
    for) and found cuBLASLt; else (False, why not)."""
    ok, why = status()
    if not ok:
        return False, why
    archs = build_info()["families"].get(CAST_FAMILY, [])
    if not any(_arch_runs_on(arch, capability) for arch in archs):
        return False, f"the library's cast family is built for {';'.join(archs) or 'no arch'}, not sm_{capability[0]}{capability[1]}"
    if not cublaslt_found():
        return False, "cuBLASLt (libcublasLt.so.13 or .12) is neither loaded in the process nor on the library path"
    return True, f"cast family built for {';'.join(archs)}; cuBLASLt found"


@functools.lru_cache(maxsize=4096)
def _decoded_linear_workspace_bytes(m: int, n: int, k: int) -> int:
    size = ctypes.c_int64()
    code = _library().lib.dq_decoded_linear_workspace_bytes(m, n, k, ctypes.byref(size))
    if code != 0:
        raise ValueError(f"dq_kernels.native.decoded_mxfp8_linear: M={m} N={n} K={k}: "
                         f"{_library().lib.dq_error_string(code).decode()}")
    return size.value


def decoded_mxfp8_linear(x, b_q, b_s, bias, out, scaling: str = "rceil") -> None:
    """out = mxfp8_mm(*quantize_mxfp8(x, scaling), b_q, b_s, bias) through a dense GEMM: x rounded
    to MXFP8 and decoded to bfloat16, the weight decoded to bfloat16 (both into a
    ``stream_workspace``), then cuBLASLt with float32 accumulation, the bias added to the float32
    sums, one rounding (split-K sums reduced in float32 only). Equals the reference up to the
    float32 summation order, within the exact domain of ``backends.decode_cublas``.

    x: float32, bfloat16 or float16 [M, K] (K % 32 == 0) as the casts read it (unit column stride,
    16-byte aligned rows); b_q float8_e4m3fn (or uint8) [N, K] and b_s (the swizzled E8M0 scales)
    contiguous, 16-byte aligned; bias: None or bfloat16 [N], 256-byte aligned; out: bfloat16 [M, N],
    contiguous, 256-byte aligned (what cuBLASLt's heuristic assumes of them; torch's allocations are);
    all on one CUDA device (``decoded_linear_status`` of its capability). Enqueued
    on the current stream.
    """
    import torch

    fn = "decoded_mxfp8_linear"
    n = b_q.shape[0]
    _, _, m, k = _cast_args(fn, x, 32, {"out": (out, (x.shape[0], n), (torch.bfloat16,), 16)}, scaling)
    b_q_ok = b_q.shape == (n, k) and b_q.dtype in (torch.float8_e4m3fn, torch.uint8)
    if not b_q_ok or (bias is not None and (bias.dtype != torch.bfloat16 or bias.shape != (n,))):
        raise ValueError(f"dq_kernels.native.{fn}: b_q must be float8_e4m3fn or uint8 [N, K = {k}] and bias None or "
                         f"bfloat16 [N], got b_q {b_q.dtype} {tuple(b_q.shape)}, "
                         f"bias {None if bias is None else (bias.dtype, tuple(bias.shape))}")
    if out.data_ptr() % 256:
        raise ValueError(f"dq_kernels.native.{fn}: out.data_ptr() must be 256-byte aligned (torch.empty's are)")
    tensors = {"b_q": b_q, "b_s": b_s} | ({} if bias is None else {"bias": bias})
    _check_operands(fn, tensors, out, (m, n), {"b_q": 16} | ({} if bias is None else {"bias": 256}))
    _check_scales(fn, b_s, n, k // 32)
    decoded_mxfp8_linear_launcher(x.dtype, m, out.device, b_q, b_s, bias, scaling)(x, out)


def decoded_mxfp8_linear_launcher(
    x_dtype: torch.dtype, m: int, device: torch.device, b_q, b_s, bias, scaling: str = "rceil"
) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """``launch(x, out)``: ``decoded_mxfp8_linear`` of this weight, bias and scaling for activations
    x [m, K] of ``x_dtype`` (or a contiguous x [..., K] of m rows in all) into out [m rows, N], with
    every argument but x's and out's addresses and x's row stride made once, here (unchecked: the
    caller guarantees what ``decoded_mxfp8_linear`` requires). Binds the addresses of b_q, b_s and
    bias and holds none of them. The launch goes to ``device``'s current stream, made current
    around it where it is not."""
    import torch

    lib = _library().lib
    n, k = b_q.shape
    size = _decoded_linear_workspace_bytes(m, n, k)
    weight = (b_q.data_ptr(), b_s.data_ptr(), *_bias_args(bias))
    tail = (m, n, k, SCALINGS[scaling])
    entry, index, x_code = lib.dq_decoded_mxfp8_linear, device.index, _dtype_code(x_dtype)
    stream_of, workspace_for = _raw_stream_query(), _workspace_getter(size, device)

    def launch(x, out):
        if torch._C._cuda_getDevice() != index:
            with torch.cuda.device(index):
                return launch(x, out)
        stream = stream_of(index)
        workspace = workspace_for(stream)
        code = entry(x.data_ptr(), x_code, _row_stride(x), *weight, out.data_ptr(), *tail,
                     workspace.data_ptr(), size, stream)
        if code != 0:
            raise RuntimeError(f"dq_kernels.native.decoded_mxfp8_linear: {entry.__name__} returned {code}: "
                               f"{lib.dq_error_string(code).decode()}")

    return launch


def _family_library(fn: str, family: str) -> ctypes.CDLL:
    native = _library()
    if native.lib is None:
        raise RuntimeError(f"dq_kernels.native.{fn}: the native library is unavailable: {native.reason}")
    if not native.info["families"].get(family):
        raise RuntimeError(
            f"dq_kernels.native.{fn}: the library was built without the {family} family "
            f"(DQ_KERNELS_CUDA_ARCHS must include {_FAMILY_ARCH[family]})"
        )
    return native.lib


def _sm100_config(fn: str, config: str) -> int:
    if config not in SM100_CONFIGS:
        raise ValueError(f"dq_kernels.native.{fn}: config must be one of {tuple(SM100_CONFIGS)}, got {config!r}")
    return SM100_CONFIGS[config]


def _add_bias(fn: str, bias, n: int, tensors: dict, alignments: dict, any_dtype: bool = True) -> None:
    """Adds a GEMM's bias (None, or [n], 16-byte aligned: bfloat16, float16 or float32, or float32
    only where not ``any_dtype``) to the tensors _check_operands checks."""
    import torch

    if bias is None:
        return
    dtypes = (torch.float32, torch.bfloat16, torch.float16) if any_dtype else (torch.float32,)
    if bias.dtype not in dtypes or tuple(bias.shape) != (n,):
        names = " or ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise ValueError(f"dq_kernels.native.{fn}: bias must be {names} [{n}], got {bias.dtype} {tuple(bias.shape)}")
    tensors["bias"] = bias
    alignments["bias"] = 16


def _bias_args(bias) -> tuple[int | None, int]:
    """A bias as the sm_90a entry points take it: (pointer, dtype code), (None, 0) for none."""
    return (None, 0) if bias is None else (bias.data_ptr(), _dtype_code(bias.dtype))


def _mm_args(fn, family, fmt, a_q, a_s, b_q, b_s, bias, out, extra: dict, out_dtypes, any_device: bool = False):
    """Checks the operands of a GEMM of ``family`` (``extra``: its NVFP4 tensor scales, if any) and,
    unless ``any_device``, that the family has code for out's device; returns (library, out dtype
    code, M, N, K)."""
    per_byte, block = (1, 32) if fmt == "mxfp8" else (2, 16)
    m, n, k = a_q.shape[0], b_q.shape[0], a_q.shape[1] * per_byte
    tensors = {"a_q": a_q, "a_s": a_s, "b_q": b_q, "b_s": b_s, **extra, "out": out}
    alignments = {"a_q": 16, "a_s": 16, "b_q": 16, "b_s": 16, "out": 16}  # TMA
    _add_bias(fn, bias, n, tensors, alignments, any_dtype=family == SM90_FAMILY)
    _family_library(fn, family)
    for name in ("a_q", "b_q"):
        if tensors[name].element_size() != 1:
            raise ValueError(f"dq_kernels.native.{fn}: {name} must hold bytes (float8 or uint8), got {tensors[name].dtype}")
    lib, code = _check_operands(fn, tensors, out, (m, n), alignments, out_dtypes)
    runs, why = (True, "") if any_device else supports_device(out.device, family)
    if not runs:
        raise ValueError(f"dq_kernels.native.{fn}: {why}")
    if b_q.shape[1] * per_byte != k:
        raise ValueError(f"dq_kernels.native.{fn}: a_q holds K = {k} but b_q holds K = {b_q.shape[1] * per_byte}")
    _check_scales(fn, a_s, m, k // block)
    _check_scales(fn, b_s, n, k // block)
    _check_tensor_scales(fn, **extra)
    return lib, code, m, n, k


def _check_tensor_scales(fn: str, **tensor_scales: torch.Tensor) -> None:
    import torch

    for name, ts in tensor_scales.items():
        if ts.dtype != torch.float32 or ts.numel() != 1:
            raise ValueError(f"dq_kernels.native.{fn}: {name} must be one float32, got {ts.dtype} {tuple(ts.shape)}")


def sm90_mxfp8_skinny_mm(a_q, a_s, b_q, b_s, bias, out, *, checked: bool = True) -> None:
    """out = a @ b.T (+ bias) with the Hopper MXFP8 kernel for few rows (csrc/sm90_skinny_gemm.cu).

    a_q: float8_e4m3fn [M, K], 1 <= M <= SM90_SKINNY_MAX_M; b_q: float8_e4m3fn [N, K] (K % 32 == 0,
    N % 8 == 0); a_s, b_s: uint8 E8M0 scales in the 128x4 swizzled layout (round_up(rows, 128) *
    round_up(K / 32, 4) bytes, padding included); bias: None or bfloat16, float16 or float32 [N];
    out: [M, N] float32, bfloat16 or float16. All contiguous, 16-byte aligned, on one CUDA device of
    compute capability 9.0. Enqueued on the current stream. Exact up to the float32 accumulation
    order while the two E8M0 bytes of every pair of blocks add up to 105..381. ``checked=False``
    skips the argument checks, for callers that guarantee all of the above (the cutlass backend,
    after the ops' checks): each check costs host time on every call of a model's Linear.
    """
    import torch

    fn = "sm90_mxfp8_skinny_mm"
    if checked:
        out_dtypes = (torch.float32, torch.bfloat16, torch.float16)
        lib, code, m, n, k = _mm_args(fn, SM90_FAMILY, "mxfp8", a_q, a_s, b_q, b_s, bias, out, {}, out_dtypes)
    else:
        lib, code, (m, k), n = _library().lib, _dtype_code(out.dtype), a_q.shape, b_q.shape[0]
    args = (a_q.data_ptr(), a_s.data_ptr(), b_q.data_ptr(), b_s.data_ptr(), *_bias_args(bias), out.data_ptr(), m, n, k, code)
    _launch(fn, lib.dq_sm90_mxfp8_skinny_mm, out.device, *args)


def sm90_nvfp4_skinny_mm(a_q, a_s, a_ts, b_q, b_s, b_ts, bias, out, *, checked: bool = True) -> None:
    """out = (a_ts * b_ts) * (a @ b.T) (+ bias), NVFP4 W4A4, with the Hopper kernel for few rows
    (csrc/sm90_skinny_gemm.cu). Operands as for ``sm100_nvfp4_mm`` (out may also be float16, the
    bias bfloat16, float16 or float32), with 1 <= M <= SM90_SKINNY_MAX_M. Exact up to the float32
    accumulation order. ``checked`` as for
    ``sm90_mxfp8_skinny_mm``.
    """
    import torch

    fn = "sm90_nvfp4_skinny_mm"
    if checked:
        extra = {"a_ts": a_ts, "b_ts": b_ts}
        out_dtypes = (torch.float32, torch.bfloat16, torch.float16)
        lib, code, m, n, k = _mm_args(fn, SM90_FAMILY, "nvfp4", a_q, a_s, b_q, b_s, bias, out, extra, out_dtypes)
    else:
        lib, code, m, n, k = _library().lib, _dtype_code(out.dtype), a_q.shape[0], b_q.shape[0], 2 * a_q.shape[1]
    args = (a_q.data_ptr(), a_s.data_ptr(), a_ts.data_ptr(), b_q.data_ptr(), b_s.data_ptr(), b_ts.data_ptr())
    _launch(fn, lib.dq_sm90_nvfp4_skinny_mm, out.device, *args, *_bias_args(bias), out.data_ptr(), m, n, k, code)


def _activation16_args(fn, fmt, a, b_q, b_s, bias, out, tensor_scales: dict, a_dtypes):
    """Checks the operands of an sm_90a GEMM with a 16-bit activation ``a`` (one of ``a_dtypes``)
    and a quantized weight of ``fmt`` (``tensor_scales``: its NVFP4 tensor scales); returns
    (library, out dtype code, activation dtype code, M, N, K)."""

    if a.dtype not in a_dtypes or a.dim() != 2:
        names = " or ".join(str(d).removeprefix("torch.") for d in a_dtypes)
        raise ValueError(f"dq_kernels.native.{fn}: a must be a 2-D {names} tensor, got {a.dtype} {tuple(a.shape)}")
    m, k = a.shape
    lib, code, n = _sm90_weight_args(fn, fmt, m, k, b_q, b_s, bias, out, {"a": a}, tensor_scales)
    return lib, code, _dtype_code(a.dtype), m, n, k


def _sm90_weight_args(fn, fmt, m, k, b_q, b_s, bias, out, tensors: dict, tensor_scales: dict):
    """Checks the weight (of ``fmt``, with its NVFP4 ``tensor_scales``), bias and out [m, N] of an
    sm_90a GEMM of inner size k, and ``tensors`` (contiguous, 16-byte aligned, on out's device);
    returns (library, out dtype code, N)."""
    per_byte, block = (1, 32) if fmt == "mxfp8" else (2, 16)
    n = b_q.shape[0]
    tensors = {**tensors, "b_q": b_q, "b_s": b_s, **tensor_scales, "out": out}
    alignments = {name: 16 for name in tensors if name not in tensor_scales}
    _add_bias(fn, bias, n, tensors, alignments)
    _family_library(fn, SM90_FAMILY)
    lib, code = _check_operands(fn, tensors, out, (m, n), alignments)
    runs, why = supports_device(out.device, SM90_FAMILY)
    if not runs:
        raise ValueError(f"dq_kernels.native.{fn}: {why}")
    if b_q.element_size() != 1 or b_q.shape[1] * per_byte != k:
        raise ValueError(
            f"dq_kernels.native.{fn}: b_q must be bytes [N, K / {per_byte}] with K = {k}, got {b_q.dtype} {tuple(b_q.shape)}"
        )
    _check_scales(fn, b_s, n, k // block)
    _check_tensor_scales(fn, **tensor_scales)
    return lib, code, n


def sm90_nvfp4_w4a16_skinny_mm(a, b_q, b_s, b_ts, bias, out, *, checked: bool = True) -> None:
    """out = b_ts * (a @ b.T) (+ bias), NVFP4 weight-only, with the Hopper kernel for few rows
    (csrc/sm90_skinny_gemm.cu).

    a: bfloat16 or float16 [M, K], 1 <= M <= SM90_SKINNY_MAX_M; b_q, b_s, b_ts: the NVFP4 weight as
    for ``sm90_nvfp4_skinny_mm``; bias: None or bfloat16, float16 or float32 [N]; out: [M, N]
    float32, bfloat16 or float16. All contiguous, 16-byte aligned, on one CUDA device of compute
    capability 9.0. Exact up to the float32 accumulation order. ``checked`` as for
    ``sm90_mxfp8_skinny_mm``.
    """
    import torch

    fn = "sm90_nvfp4_w4a16_skinny_mm"
    if checked:
        extra = {"b_ts": b_ts}
        lib, code, a_code, m, n, k = _activation16_args(fn, "nvfp4", a, b_q, b_s, bias, out, extra, (torch.bfloat16, torch.float16))
    else:
        lib, code, a_code, (m, k), n = _library().lib, _dtype_code(out.dtype), _dtype_code(a.dtype), a.shape, b_q.shape[0]
    args = (a.data_ptr(), a_code, b_q.data_ptr(), b_s.data_ptr(), b_ts.data_ptr(), *_bias_args(bias))
    _launch(fn, lib.dq_sm90_nvfp4_w4a16_skinny_mm, out.device, *args, out.data_ptr(), m, n, k, code)


def _skinny_linear_args(fn, fmt, a, b_q, b_s, bias, out, tensor_scales: dict):
    """Checks the operands of an sm_90a skinny Linear (a bfloat16/float16 activation ``a`` quantized
    in the kernel, ``out`` of a's dtype, 1 <= M <= SM90_SKINNY_MAX_M); returns (library, activation
    dtype code, M, N, K)."""
    import torch

    lib, code, a_code, m, n, k = _activation16_args(fn, fmt, a, b_q, b_s, bias, out, tensor_scales,
                                                     (torch.bfloat16, torch.float16))
    if out.dtype != a.dtype:
        raise ValueError(f"dq_kernels.native.{fn}: out must have a's dtype {a.dtype}, got {out.dtype}")
    if not 1 <= m <= SM90_SKINNY_MAX_M:
        raise ValueError(f"dq_kernels.native.{fn}: a must have 1 to {SM90_SKINNY_MAX_M} rows, got {m}")
    return lib, a_code, m, n, k


def sm90_mxfp8_skinny_linear(a, b_q, b_s, bias, out, scaling: str = "rceil", *, checked: bool = True) -> None:
    """out = quantize_mxfp8(a, scaling) @ b.T (+ bias) in one launch: the Hopper MXFP8 kernel for few
    rows with the activation quantized inside it (csrc/sm90_skinny_gemm.cu), bit for bit
    ``sm90_mxfp8_skinny_mm`` on ``formats.quantize_mxfp8(a, scaling)``.

    a: bfloat16 or float16 [M, K], 1 <= M <= SM90_SKINNY_MAX_M; b_q, b_s: the MXFP8 weight as for
    ``sm90_mxfp8_skinny_mm``; bias: None or bfloat16, float16 or float32 [N]; out: [M, N] of a's
    dtype; scaling: "rceil" or "floor". All contiguous, 16-byte aligned, on one CUDA device of
    compute capability 9.0. ``checked`` as for ``sm90_mxfp8_skinny_mm``.
    """
    fn = "sm90_mxfp8_skinny_linear"
    if checked:
        if scaling not in SCALINGS:
            raise ValueError(f"dq_kernels.native.{fn}: scaling must be one of {tuple(SCALINGS)}, got {scaling!r}")
        lib, a_code, m, n, k = _skinny_linear_args(fn, "mxfp8", a, b_q, b_s, bias, out, {})
    else:
        lib, a_code, (m, k), n = _library().lib, _dtype_code(a.dtype), a.shape, b_q.shape[0]
    args = (a.data_ptr(), a_code, b_q.data_ptr(), b_s.data_ptr(), *_bias_args(bias), out.data_ptr(), m, n, k,
            SCALINGS[scaling])
    _launch(fn, lib.dq_sm90_mxfp8_skinny_linear, out.device, *args)


def sm90_nvfp4_skinny_linear(a, b_q, b_s, a_ts, b_ts, bias, out, *, checked: bool = True) -> None:
    """out = nvfp4_mm(*quantize_nvfp4(a, a_ts), b) (+ bias) in one launch: the Hopper NVFP4 W4A4
    kernel for few rows with the activation quantized inside it (csrc/sm90_skinny_gemm.cu), bit for
    bit ``sm90_nvfp4_skinny_mm`` on ``formats.quantize_nvfp4(a, a_ts)``.

    a: bfloat16 or float16 [M, K], 1 <= M <= SM90_SKINNY_MAX_M; a_ts: None for the dynamic tensor
    scale amax(|a|) / 2688 (the kernel computes it), or the given one (one float32); b_q, b_s, b_ts:
    the NVFP4 weight as for ``sm90_nvfp4_skinny_mm``; bias: None or bfloat16, float16 or float32
    [N]; out: [M, N] of a's dtype. All contiguous, 16-byte aligned, on one CUDA device of compute
    capability 9.0. ``checked`` as for ``sm90_mxfp8_skinny_mm``.
    """
    fn = "sm90_nvfp4_skinny_linear"
    if checked:
        extra = {"b_ts": b_ts} if a_ts is None else {"b_ts": b_ts, "a_ts": a_ts}
        lib, a_code, m, n, k = _skinny_linear_args(fn, "nvfp4", a, b_q, b_s, bias, out, extra)
    else:
        lib, a_code, (m, k), n = _library().lib, _dtype_code(a.dtype), a.shape, b_q.shape[0]
    a_ts_ptr = None if a_ts is None else a_ts.data_ptr()
    args = (a.data_ptr(), a_code, b_q.data_ptr(), b_s.data_ptr(), a_ts_ptr, b_ts.data_ptr(), *_bias_args(bias))
    _launch(fn, lib.dq_sm90_nvfp4_skinny_linear, out.device, *args, out.data_ptr(), m, n, k)


def _linear_args(fn, fmt, x, b_q, b_s, bias, out, kernel: str, tensor_scales: dict):
    """Checks the operands of an sm_90a Linear in one call (``sm90_*_linear``); returns (library, x's
    dtype code, M, N, K)."""
    import torch

    if kernel not in SM90_LINEAR_KERNELS:
        raise ValueError(f"dq_kernels.native.{fn}: kernel must be one of {tuple(SM90_LINEAR_KERNELS)}, got {kernel!r}")
    lib, x_code, m, k = _cast_args(fn, x, 32, {})
    if kernel == "quantizing_skinny" and (x.dtype == torch.float32 or not x.is_contiguous()):
        raise ValueError(f"dq_kernels.native.{fn}: the quantizing skinny kernel takes a contiguous bfloat16 or "
                         f"float16 x, got {x.dtype} with strides {x.stride()}")
    if kernel != "mixed" and m > SM90_SKINNY_MAX_M:
        raise ValueError(f"dq_kernels.native.{fn}: the {kernel} kernel takes 1 to {SM90_SKINNY_MAX_M} rows, got {m}")
    if out.dtype != x.dtype or out.device != x.device:
        raise ValueError(f"dq_kernels.native.{fn}: out must have x's dtype {x.dtype} and device {x.device}, "
                         f"got {out.dtype} on {out.device}")
    _, _, n = _sm90_weight_args(fn, fmt, m, k, b_q, b_s, bias, out, {}, tensor_scales)
    return lib, x_code, m, n, k


def _row_stride(x) -> int:
    """The row stride in elements of x [M, K], or of a contiguous x [..., K] read as [M, K]: K for
    a contiguous x (torch calls a one-row view contiguous whatever its row stride; the quantizing
    skinny kernel reads rows K apart)."""
    return x.shape[-1] if x.is_contiguous() else x.stride(0)


@functools.lru_cache(maxsize=4096)
def _linear_workspace_bytes(device_index: int, fmt: str, kernel: str, m: int, n: int, k: int) -> int:
    """The workspace bytes of ``sm90_*_linear`` (a function of the device's SM count and L2 size
    through the mixed-input kernel's plan), kept per shape."""
    import torch

    lib = _family_library("sm90_linear_workspace_bytes", SM90_FAMILY)
    size = ctypes.c_int64()
    with torch.cuda.device(device_index):
        code = lib.dq_sm90_linear_workspace_bytes(_FORMAT_CODES[fmt], SM90_LINEAR_KERNELS[kernel], m, n, k,
                                                  ctypes.byref(size))
    if code != 0:
        raise ValueError(f"dq_kernels.native.sm90_{fmt}_linear: M={m} N={n} K={k}: {lib.dq_error_string(code).decode()}")
    return size.value


def sm90_mxfp8_linear(x, b_q, b_s, bias, out, scaling: str, kernel: str, *, checked: bool = True) -> None:
    """out = mxfp8_mm(*quantize_mxfp8(x, scaling), b_q, b_s, bias) in one call (csrc/sm90_linear.cu):
    the CUDA cast and then, by ``kernel``, "quantizing_skinny" (the skinny kernel quantizes x itself:
    one launch), "skinny" (the cast into a workspace, the skinny mm) or "mixed" (x rounded to MXFP8
    and decoded to bfloat16 into a workspace, the mixed-input kernel). Bit for bit the two steps.

    x: float32, bfloat16 or float16 [M, K] (K % 32 == 0) as the casts read it (unit column stride,
    16-byte aligned rows; "quantizing_skinny": contiguous bfloat16 or float16), M <= SM90_SKINNY_MAX_M
    for the skinny kernels; b_q, b_s: the MXFP8 weight as for ``sm90_mxfp8_skinny_mm``; bias: None or
    bfloat16, float16 or float32 [N]; out: [M, N] of x's dtype; scaling: "rceil" or "floor". On one
    CUDA device of compute capability 9.0, 16-byte aligned. The workspace is ``stream_workspace``'s.
    ``checked`` as for ``sm90_mxfp8_skinny_mm``.
    """
    fn = "sm90_mxfp8_linear"
    if checked:
        if scaling not in SCALINGS:
            raise ValueError(f"dq_kernels.native.{fn}: scaling must be one of {tuple(SCALINGS)}, got {scaling!r}")
        _linear_args(fn, "mxfp8", x, b_q, b_s, bias, out, kernel, {})
    sm90_linear_launcher("mxfp8", kernel, x.dtype, x.shape[0], out.device, b_q, b_s, bias, scaling=scaling)(x, out)


def sm90_nvfp4_linear(x, b_q, b_s, b_ts, activation_scale, bias, out, kernel: str, *, checked: bool = True) -> None:
    """out = nvfp4_mm(*quantize_nvfp4(x, activation_scale), b_q, b_s, b_ts, bias) in one call
    (csrc/sm90_linear.cu), as ``sm90_mxfp8_linear`` does for MXFP8 ("mixed": x rounded to NVFP4 and
    decoded to float16 without its tensor scale, which the GEMM applies).

    x, bias, out, kernel as for ``sm90_mxfp8_linear`` (K % 32 == 0); b_q, b_s, b_ts: the NVFP4
    weight as for ``sm90_nvfp4_skinny_mm``; activation_scale: None for the dynamic tensor scale
    amax(|x|) / 2688, or the given one (one float32 on x's device). ``checked`` as for
    ``sm90_mxfp8_skinny_mm``.
    """
    fn = "sm90_nvfp4_linear"
    if checked:
        extra = {"b_ts": b_ts} if activation_scale is None else {"b_ts": b_ts, "activation_scale": activation_scale}
        _linear_args(fn, "nvfp4", x, b_q, b_s, bias, out, kernel, extra)
    launch = sm90_linear_launcher("nvfp4", kernel, x.dtype, x.shape[0], out.device, b_q, b_s, bias, b_ts=b_ts,
                                  activation_scale=activation_scale)
    launch(x, out)


def sm90_linear_launcher(
    fmt: str, kernel: str, x_dtype: torch.dtype, m: int, device: torch.device, b_q, b_s, bias, *,
    scaling: str = "rceil", b_ts=None, activation_scale=None,
) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """``launch(x, out)``: ``sm90_{fmt}_linear`` of this weight, bias and options for activations x
    [m, K] of ``x_dtype`` on ``device`` (or a contiguous x [..., K] of m rows in all) into out of m
    rows of N (contiguous, x's dtype). Every argument but x's and out's addresses and x's row stride
    is made once, here (the unchecked path: the caller guarantees what ``sm90_mxfp8_linear`` /
    ``sm90_nvfp4_linear`` require of all of them). The launcher binds the addresses of the weight,
    bias and tensor-scale tensors and holds none of them: the caller keeps them alive while it uses
    the launcher. The launch goes to ``device``'s current stream, with a ``stream_workspace`` per
    launch, ``device`` made current around it where it is not."""
    import torch

    fn = f"sm90_{fmt}_linear"
    lib = _library().lib
    n, k = b_q.shape[0], b_q.shape[1] * (1 if fmt == "mxfp8" else 2)
    size = _linear_workspace_bytes(device.index, fmt, kernel, m, n, k)
    x_code, kernel_code, index = _dtype_code(x_dtype), SM90_LINEAR_KERNELS[kernel], device.index
    if fmt == "mxfp8":
        entry = lib.dq_sm90_mxfp8_linear
        weight = (b_q.data_ptr(), b_s.data_ptr(), *_bias_args(bias))
        tail = (m, n, k, SCALINGS[scaling], kernel_code)
    else:
        entry = lib.dq_sm90_nvfp4_linear
        a_ts = None if activation_scale is None else activation_scale.data_ptr()
        weight = (b_q.data_ptr(), b_s.data_ptr(), b_ts.data_ptr(), a_ts, *_bias_args(bias))
        tail = (m, n, k, kernel_code)

    stream_of, workspace_for = _raw_stream_query(), _workspace_getter(size, device)

    def launch(x, out):
        if torch._C._cuda_getDevice() != index:  # the entry points launch on the current device
            with torch.cuda.device(index):
                return launch(x, out)
        stream = stream_of(index)
        workspace = workspace_for(stream)
        code = entry(x.data_ptr(), x_code, _row_stride(x), *weight, out.data_ptr(), *tail,
                     None if workspace is None else workspace.data_ptr(), size, stream)
        if code != 0:
            message = lib.dq_error_string(code).decode()
            raise RuntimeError(f"dq_kernels.native.{fn}: {entry.__name__} returned {code}: {message}")

    return launch


def _check_tokens(fn: str, tokens: int) -> None:
    """The mixed-input kernel's token tiles (0: its own choice)."""
    if tokens not in (0, 64, 128, 256):
        raise ValueError(f"dq_kernels.native.{fn}: tokens must be 0, 64, 128 or 256, got {tokens!r}")


def sm90_mxfp8_mixed_mm(a, b_q, b_s, bias, out, tokens: int = 0, share_tiles: bool = True, *, checked: bool = True) -> None:
    """out = a @ b.T (+ bias) for a bfloat16 activation and an MXFP8 weight, with the Hopper
    mixed-input kernel (csrc/sm90_mixed_gemm.cu: the weight decoded to bf16 in registers, bf16 wgmma).

    a: bfloat16 [M, K] (for an MXFP8 activation: its exact decode); b_q, b_s: the MXFP8 weight as
    for ``sm90_mxfp8_skinny_mm``; bias: None or bfloat16, float16 or float32 [N]; out: [M, N]
    float32, bfloat16 or float16. All contiguous, 16-byte aligned, on one CUDA device of compute
    capability 9.0. Exact up to the float32 accumulation order unless a weight scale byte below 3
    meets nonzero data (dq_kernels.h). tokens: activation rows per CTA, 64, 128 or 256, or 0 for the
    kernel's choice (``sm90_mixed_plan``). share_tiles: whether, when the tiles leave the last wave
    of CTAs partly idle, the kernel may share tiles along K among several CTAs where it estimates
    that faster (``Sm90MixedPlan``; the workspace is ``stream_workspace``'s); False runs every tile
    whole (the sums differ only in float32 rounding). ``checked`` as for ``sm90_mxfp8_skinny_mm``.
    """
    import torch

    fn = "sm90_mxfp8_mixed_mm"
    if checked:
        _check_tokens(fn, tokens)
        lib, code, _, m, n, k = _activation16_args(fn, "mxfp8", a, b_q, b_s, bias, out, {}, (torch.bfloat16,))
    else:
        lib, code, (m, k), n = _library().lib, _dtype_code(out.dtype), a.shape, b_q.shape[0]
    device = out.device
    stream = current_raw_stream(device.index)
    workspace = _mixed_workspace(m, n, k, tokens, device, stream) if share_tiles else None
    args = (a.data_ptr(), b_q.data_ptr(), b_s.data_ptr(), *_bias_args(bias), out.data_ptr(), m, n, k, code, tokens)
    _launch(fn, lib.dq_sm90_mxfp8_mixed_mm, device, *args, *_pointer_and_bytes(workspace), stream=stream)


def sm90_nvfp4_mixed_mm(
    a, b_q, b_s, a_ts, b_ts, bias, out, tokens: int = 0, share_tiles: bool = True, *, checked: bool = True
) -> None:
    """out = (a_ts * b_ts) * (a @ b.T) (+ bias) for a 16-bit activation and an NVFP4 weight, with
    the Hopper mixed-input kernel (csrc/sm90_mixed_gemm.cu).

    a: bfloat16 or float16 [M, K] (for W4A4: the activation's exact e2m1 x e4m3 decode, without its
    tensor scale, which is a_ts); a_ts: None (weight-only) or one float32; b_q, b_s, b_ts: the NVFP4
    weight as for ``sm90_nvfp4_skinny_mm``; bias, out, tokens, share_tiles as for
    ``sm90_mxfp8_mixed_mm``. Exact up to the float32 accumulation order. ``checked`` as for
    ``sm90_mxfp8_skinny_mm``.
    """
    import torch

    fn = "sm90_nvfp4_mixed_mm"
    if checked:
        _check_tokens(fn, tokens)
        extra = {"b_ts": b_ts} if a_ts is None else {"a_ts": a_ts, "b_ts": b_ts}
        lib, code, a_code, m, n, k = _activation16_args(fn, "nvfp4", a, b_q, b_s, bias, out, extra, (torch.bfloat16, torch.float16))
    else:
        lib, code, a_code, (m, k), n = _library().lib, _dtype_code(out.dtype), _dtype_code(a.dtype), a.shape, b_q.shape[0]
    device = out.device
    stream = current_raw_stream(device.index)
    a_ts_ptr = None if a_ts is None else a_ts.data_ptr()
    args = (a.data_ptr(), a_code, b_q.data_ptr(), b_s.data_ptr(), a_ts_ptr, b_ts.data_ptr(), *_bias_args(bias))
    workspace = _mixed_workspace(m, n, k, tokens, device, stream) if share_tiles else None
    args += (out.data_ptr(), m, n, k, code, tokens, *_pointer_and_bytes(workspace))
    _launch(fn, lib.dq_sm90_nvfp4_mixed_mm, device, *args, stream=stream)


@dataclass(frozen=True)
class Sm90MixedPlan:
    """How the sm_90a mixed-input kernel runs a problem (``sm90_mixed_plan``)."""

    tokens: int  # activation rows per CTA: 64, 128 or 256
    shared_tiles: int  # tiles of the last waves shared along K by CTAs; 0: every tile whole
    shared_ctas: int  # the CTAs sharing them (one wave at most); 0 without shared tiles
    parts: int  # K parts per shared tile, one CTA each; 0: stream-K (all shared K steps cut evenly)
    workspace_bytes: int  # device memory the shared tiles need (0 without them)


def sm90_mixed_plan(m: int, n: int, k: int, tokens: int = 0) -> Sm90MixedPlan:
    """The plan of ``sm90_*_mixed_mm`` for an [m, k] x [n, k]^T product and ``tokens`` (0: the
    kernel's choice) on the current CUDA device (its SM count; 132 without one)."""
    fn = "sm90_mixed_plan"
    _check_tokens(fn, tokens)
    lib = _family_library(fn, SM90_FAMILY)
    tokens_out, workspace = ctypes.c_int(), ctypes.c_int64()
    shared_tiles, shared_ctas, parts = ctypes.c_int64(), ctypes.c_int64(), ctypes.c_int64()
    code = lib.dq_sm90_mixed_mm_plan(m, n, k, tokens, ctypes.byref(tokens_out), ctypes.byref(shared_tiles),
                                     ctypes.byref(shared_ctas), ctypes.byref(parts), ctypes.byref(workspace))
    if code != 0:
        raise ValueError(f"dq_kernels.native.{fn}: M={m} N={n} K={k}: {lib.dq_error_string(code).decode()}")
    return Sm90MixedPlan(tokens_out.value, shared_tiles.value, shared_ctas.value, parts.value, workspace.value)


@functools.lru_cache(maxsize=4096)
def _plan_on(device_index: int, m: int, n: int, k: int, tokens: int) -> Sm90MixedPlan:
    """sm90_mixed_plan on a given device, kept per shape: a model's GEMM calls repeat a few shapes,
    and the plan (a function of the device's SM count and L2 size) does not change."""
    import torch

    with torch.cuda.device(device_index):
        return sm90_mixed_plan(m, n, k, tokens)


def _mixed_workspace(m: int, n: int, k: int, tokens: int, device: torch.device, stream: int) -> torch.Tensor | None:
    """A workspace for the mixed-input kernel's plan on ``stream`` (``stream_workspace``), or None."""
    return stream_workspace(_plan_on(device.index, m, n, k, tokens).workspace_bytes, device, stream)


_WORKSPACES = threading.local()  # per thread: {device index: uint8 buffer, for its default stream}


# The largest workspace stream_workspace keeps. Above it a launch gets a fresh allocation: its
# 2-3 us of host time are noise beside the GEMM such an activation feeds (hundreds of us), and a
# kept buffer of the largest activation would stay allocated beside a compiled model's CUDA-graph
# pool (FLUX batch 4, NVFP4: 0.5 GiB more peak memory on the H100 when it was kept at any size).
KEPT_WORKSPACE_MAX_BYTES = 32 << 20


def stream_workspace(size: int, device: torch.device, stream: int) -> torch.Tensor | None:
    """At least ``size`` bytes of device memory (uint8) for a launch on ``stream`` (the handle of
    ``device``'s current stream, ``current_raw_stream``: the caller passes it on to the launch),
    or None for size 0; the caller keeps it alive until the launch is enqueued. On the device's
    default stream outside CUDA-graph capture, up to ``KEPT_WORKSPACE_MAX_BYTES``, one buffer per
    thread, grown as needed and kept (no allocation per call): launches on one stream run in order,
    so each finds it free, and a buffer per thread keeps two threads' launches on one stream from
    interleaving in it. Larger sizes, other streams and any size inside capture get a fresh
    allocation. Why not keep one per stream: torch.compile's mode="reduce-overhead" runs its warm-up
    on a stream of its own with every allocation of the thread going to its CUDA-graph pool, and a
    buffer kept from there is memory of that pool its graphs do not track (it refuses to record)."""
    import torch

    if not size:
        return None
    if size > KEPT_WORKSPACE_MAX_BYTES or stream != _default_stream(device) or torch._C._cuda_isCurrentStreamCapturing():
        return _empty_bytes(size, device)
    buffers = _WORKSPACES.__dict__
    buffer = buffers.get(device.index)
    if buffer is None or buffer.numel() < size:
        buffer = buffers[device.index] = _empty_bytes(size, device)
    return buffer


_DEFAULT_STREAMS: dict = {}  # device index -> the handle of its default stream


def _default_stream(device: torch.device) -> int:
    """The handle of ``device``'s default stream, looked up once."""
    handle = _DEFAULT_STREAMS.get(device.index)
    if handle is None:
        import torch

        handle = _DEFAULT_STREAMS[device.index] = torch.cuda.default_stream(device).cuda_stream
    return handle


_BYTE_TEMPLATES: dict = {}  # device index -> an empty uint8 tensor on that device


def _byte_template(device: torch.device) -> torch.Tensor:
    """An empty uint8 tensor on ``device``, whose ``new_empty`` allocates from torch's caching
    allocator at half the host cost of ``torch.empty(..., device=...)`` (2.9 vs 5.7 us on the H100
    machine: no dtype and device arguments to parse)."""
    import torch

    template = _BYTE_TEMPLATES.get(device.index)
    if template is None:
        template = _BYTE_TEMPLATES[device.index] = torch.empty(0, dtype=torch.uint8, device=device)
    return template


def _empty_bytes(size: int, device: torch.device) -> torch.Tensor:
    """An uninitialized uint8 [size] on ``device`` (``_byte_template``)."""
    return _byte_template(device).new_empty(size)


def _workspace_getter(size: int, device: torch.device) -> Callable[[int], torch.Tensor | None]:
    """``get(stream)``: ``stream_workspace(size, device, stream)``, decided once for a launcher: None
    for size 0, a fresh allocation above ``KEPT_WORKSPACE_MAX_BYTES``, else the kept buffer."""
    if not size:
        return lambda stream: None
    if size > KEPT_WORKSPACE_MAX_BYTES:
        template = _byte_template(device)
        return lambda stream: template.new_empty(size)
    return lambda stream: stream_workspace(size, device, stream)


def _pointer_and_bytes(workspace: torch.Tensor | None) -> tuple[int | None, int]:
    return (None, 0) if workspace is None else (workspace.data_ptr(), workspace.numel())


def sm100_mxfp8_mm(a_q, a_s, b_q, b_s, bias, out, config: str = "auto") -> None:
    """out = a @ b.T (+ bias) with the CUTLASS sm_100a MXFP8 kernel (csrc/sm100_mxfp8_gemm.cu).

    a_q: float8_e4m3fn [M, K]; b_q: float8_e4m3fn [N, K] (K % 32 == 0); a_s, b_s: uint8 E8M0 scales
    in the 128x4 swizzled layout (round_up(rows, 128) * round_up(K / 32, 4) bytes); bias: None or
    float32 [N]; out: [M, N] bfloat16 or float32, N % 8 == 0 (bf16) or N % 4 == 0 (fp32). All
    contiguous, 16-byte aligned, on one CUDA device of compute capability 10.0. config: "auto",
    "1sm" or "2sm" (dq_kernels.h). Enqueued on the current stream.
    """
    import torch

    fn = "sm100_mxfp8_mm"
    lib, code, m, n, k = _mm_args(fn, SM100_FAMILY, "mxfp8", a_q, a_s, b_q, b_s, bias, out, {}, (torch.float32, torch.bfloat16))
    bias_ptr = None if bias is None else bias.data_ptr()
    args = (a_q.data_ptr(), a_s.data_ptr(), b_q.data_ptr(), b_s.data_ptr(), bias_ptr, out.data_ptr(), m, n, k, code)
    _launch(fn, lib.dq_sm100_mxfp8_mm, out.device, *args, _sm100_config(fn, config))


def sm100_nvfp4_mm(a_q, a_s, a_ts, b_q, b_s, b_ts, bias, out, config: str = "auto") -> None:
    """out = (a_ts * b_ts) * (a @ b.T) (+ bias) with the CUTLASS sm_100a NVFP4 kernel
    (csrc/sm100_nvfp4_gemm.cu).

    a_q: uint8 [M, K / 2], b_q: uint8 [N, K / 2] (two e2m1 codes per byte, element 2i in the low
    nibble; K % 32 == 0); a_s, b_s: float8_e4m3fn scales in the 128x4 swizzled
    layout (round_up(rows, 128) * round_up(K / 16, 4) bytes); a_ts, b_ts: float32 with one element;
    bias, out, config as for sm100_mxfp8_mm. Enqueued on the current stream.
    """
    import torch

    fn = "sm100_nvfp4_mm"
    extra = {"a_ts": a_ts, "b_ts": b_ts}
    lib, code, m, n, k = _mm_args(fn, SM100_FAMILY, "nvfp4", a_q, a_s, b_q, b_s, bias, out, extra, (torch.float32, torch.bfloat16))
    bias_ptr = None if bias is None else bias.data_ptr()
    args = (a_q.data_ptr(), a_s.data_ptr(), a_ts.data_ptr(), b_q.data_ptr(), b_s.data_ptr(), b_ts.data_ptr())
    args += (bias_ptr, out.data_ptr(), m, n, k, code, _sm100_config(fn, config))
    _launch(fn, lib.dq_sm100_nvfp4_mm, out.device, *args)


def sm100_mm_prepare(fmt, a_q, a_s, b_q, b_s, bias, out, a_ts=None, b_ts=None, config: str = "auto") -> None:
    """Everything ``sm100_{fmt}_mm`` does before its launch, on the host, for these operands (as
    ``sm100_mxfp8_mm`` / ``sm100_nvfp4_mm`` take them; a_ts and b_ts for NVFP4 only): the checks,
    CUTLASS's can_implement and the kernel's parameters, for which the CUDA driver encodes the TMA
    descriptors of a_q, b_q, a_s, b_s and out from their pointers and strides. Launches nothing, so
    it runs on any CUDA GPU for MXFP8 (the library needs the sm100_gemm family, not a Blackwell
    device): on an H100 it checks the descriptors a B200 launch would get. NVFP4 only on a Blackwell
    GPU: an older GPU's driver refuses its 4-bit TMA type, a refusal CUTLASS reports on stderr only
    (measured on an H100, dq_kernels.h). ValueError naming the problem when the checks, CUTLASS or
    the driver refuse it."""
    import torch

    fn = "sm100_mm_prepare"
    if fmt not in ("mxfp8", "nvfp4"):
        raise ValueError(f"dq_kernels.native.{fn}: fmt must be mxfp8 or nvfp4, got {fmt!r}")
    given = (a_ts is not None, b_ts is not None)
    if given != ((True, True) if fmt == "nvfp4" else (False, False)):
        raise ValueError(f"dq_kernels.native.{fn}: a_ts and b_ts are required for nvfp4 and taken for it only")
    extra = {"a_ts": a_ts, "b_ts": b_ts} if fmt == "nvfp4" else {}
    out_dtypes = (torch.float32, torch.bfloat16)
    lib, code, m, n, k = _mm_args(fn, SM100_FAMILY, fmt, a_q, a_s, b_q, b_s, bias, out, extra, out_dtypes, True)
    if fmt == "nvfp4" and out.is_cuda and torch.cuda.get_device_capability(out.device)[0] < 10:
        raise ValueError(
            f"dq_kernels.native.{fn}: nvfp4 needs a Blackwell GPU: the driver of {out.device} refuses the 4-bit "
            "TMA data type (CU_TENSOR_MAP_DATA_TYPE_16U4_ALIGN8B), and CUTLASS reports that on stderr only"
        )
    bias_ptr = None if bias is None else bias.data_ptr()
    if fmt == "mxfp8":
        prepare = lib.dq_sm100_mxfp8_mm_prepare
        args = (a_q.data_ptr(), a_s.data_ptr(), b_q.data_ptr(), b_s.data_ptr())
    else:
        prepare = lib.dq_sm100_nvfp4_mm_prepare
        args = (a_q.data_ptr(), a_s.data_ptr(), a_ts.data_ptr(), b_q.data_ptr(), b_s.data_ptr(), b_ts.data_ptr())
    args += (bias_ptr, out.data_ptr(), m, n, k, code, _sm100_config(fn, config))
    with torch.cuda.device(out.device):
        result = prepare(*args)
    if result != 0:
        message = lib.dq_error_string(result).decode()
        raise ValueError(f"dq_kernels.native.{fn}: {fmt} M={m} N={n} K={k} {out.dtype} config={config}: {message}")


@dataclass(frozen=True)
class Sm100Plan:
    """What the sm100 mm of a format builds for a problem (``sm100_mm_plan``)."""

    config: str  # the resolved config: "1sm_128x128" or "2sm_256x128"
    strides: tuple[int, int, int]  # row strides CUTLASS gets for A, B and out, in elements
    sfa_offsets: torch.Tensor | None  # int64 [M, K / block]: CUTLASS's byte offset of each scale of A
    sfb_offsets: torch.Tensor | None  # int64 [N, K / block]: the same for B


def sm100_mm_plan(
    fmt: str, m: int, n: int, k: int, out_dtype: str = "bfloat16", config: str = "auto", scale_offsets: bool = False
) -> Sm100Plan:
    """Host-side dry run of ``sm100_{fmt}_mm`` for an [m, k] x [n, k]^T problem (needs no GPU): the
    config it would run, the strides and (with ``scale_offsets``) the scale-factor offsets of the
    CUTLASS arguments it would build. ValueError if the kernel cannot run the problem."""
    import torch

    fn = "sm100_mm_plan"
    lib = _family_library(fn, SM100_FAMILY)
    if fmt not in ("mxfp8", "nvfp4") or out_dtype not in _SM100_OUT_CODES:
        raise ValueError(f"dq_kernels.native.{fn}: fmt must be mxfp8 or nvfp4 and out_dtype float32 or bfloat16")
    block = 32 if fmt == "mxfp8" else 16
    strides = torch.zeros(3, dtype=torch.int64)
    sfa = torch.empty(m, k // block, dtype=torch.int64) if scale_offsets else None
    sfb = torch.empty(n, k // block, dtype=torch.int64) if scale_offsets else None
    plan = lib.dq_sm100_mxfp8_mm_plan if fmt == "mxfp8" else lib.dq_sm100_nvfp4_mm_plan
    code = plan(
        m, n, k, _SM100_OUT_CODES[out_dtype], _sm100_config(fn, config), strides.data_ptr(),
        None if sfa is None else sfa.data_ptr(), None if sfb is None else sfb.data_ptr(),
    )  # fmt: skip
    if code < 0:
        message = lib.dq_error_string(code).decode()
        raise ValueError(f"dq_kernels.native.{fn}: {fmt} M={m} N={n} K={k} {out_dtype}: {message}")
    return Sm100Plan(SM100_CONFIG_NAMES[code], tuple(strides.tolist()), sfa, sfb)
