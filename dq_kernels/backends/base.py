"""The backend spec (what a backend supports, as data) and the interface every backend implements.

All backends take and return the canonical operands described in ``dq_kernels.formats``. The ops
layer validates arguments before calling a backend, so backends may assume well-formed operands
within the limits their spec declares.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import dataclass

import torch

# Op names, the same as the custom ops in dq_kernels.ops (without the namespace).
OPS = ("quantize_mxfp8", "quantize_nvfp4", "mxfp8_mm", "nvfp4_mm", "nvfp4_weight_only_mm")
OP_FORMAT = {
    "quantize_mxfp8": "mxfp8",
    "mxfp8_mm": "mxfp8",
    "quantize_nvfp4": "nvfp4",
    "nvfp4_mm": "nvfp4",
    "nvfp4_weight_only_mm": "nvfp4",
}


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run this call; the message says why."""


@dataclass(frozen=True)
class BackendSpec:
    """What a backend supports. The registry selects from it; tests skip from it.

    ``capabilities``: CUDA compute capabilities it runs on (None: any); ``op_capabilities`` narrows
    them for single ops, as (op, capabilities) pairs. ``cpu``: whether it runs on CPU tensors. Shape limits apply to mm ops (M rows of a, N rows of b, K the reduction).
    ``auto``: whether auto may rank it after the built-in ranking (built-in backends are ranked
    by ``dq_kernels.backends.ranking`` alone).
    ``bias_dtype``: the dtype its GEMMs read the bias in (None: any); eager Linear calls hand the
    bias over converted, once per bias, instead of converting it in every call.
    """

    name: str
    description: str
    ops: tuple[str, ...]
    cpu: bool = False
    capabilities: tuple[tuple[int, int], ...] | None = None
    op_capabilities: tuple[tuple[str, tuple[tuple[int, int], ...]], ...] = ()
    auto: bool = True
    n_multiple: int = 1
    k_multiple: int = 1
    bias_dtype: torch.dtype | None = None

    @property
    def formats(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(OP_FORMAT[op] for op in self.ops))

    def capabilities_for(self, op: str | None) -> tuple[tuple[int, int], ...] | None:
        """The compute capabilities ``op`` runs on (the backend's unless ``op_capabilities`` narrows them)."""
        return dict(self.op_capabilities).get(op, self.capabilities)

    def device_reason(self, device: torch.device, op: str | None = None) -> str | None:
        """Why this backend cannot run on ``device`` at all (or, given ``op``, that op), or None."""
        if device.type == "cpu":
            return None if self.cpu else "runs on CUDA devices only"
        if device.type != "cuda":
            return f"does not run on {device.type} devices"
        wanted = self.capabilities_for(op)
        if wanted is None:
            return None
        cc = capability(device)
        if cc in wanted:
            return None
        names = ", ".join(f"{a}.{b}" for a, b in wanted)
        what = f"{op} needs" if wanted is not self.capabilities else "needs"
        return f"{what} compute capability {names}; {device} has {cc[0]}.{cc[1]}"

    def shape_reason(self, op: str, m: int, n: int, k: int) -> str | None:
        """Why this backend cannot run mm op ``op`` for this shape, or None."""
        if not op.endswith("_mm"):
            return None
        if n % self.n_multiple:
            return f"needs N to be a multiple of {self.n_multiple}, got N = {n}"
        if k % self.k_multiple:
            return f"needs K to be a multiple of {self.k_multiple}, got K = {k}"
        return None


@functools.cache
def installed(module: str) -> bool:
    """Whether ``module`` can be imported (looked up once per process: the registry asks per call)."""
    return importlib.util.find_spec(module) is not None


def triton_interpreted() -> bool:
    """Whether Triton runs kernels on its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def aligned_16(t: torch.Tensor) -> torch.Tensor:
    """t, or a copy of it when its data pointer is not 16-byte aligned (TMA and vector loads need 16)."""
    return t if t.data_ptr() % 16 == 0 else t.clone()


def float32_bias(bias: torch.Tensor | None) -> torch.Tensor | None:
    """The bias as the native (CUDA C++) kernels take it: None, or float32 [N], contiguous and
    16-byte aligned (exact for every bias dtype; the reference adds it in float32 too)."""
    if bias is None or (bias.dtype == torch.float32 and bias.is_contiguous() and bias.data_ptr() % 16 == 0):
        return bias
    return aligned_16(bias.to(torch.float32).contiguous())


_CAPABILITY_CACHE: dict[int, tuple[int, int]] = {}


def capability(device: torch.device) -> tuple[int, int]:
    """(major, minor) of a CUDA device, cached per device index."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _CAPABILITY_CACHE:
        _CAPABILITY_CACHE[index] = torch.cuda.get_device_capability(index)
    return _CAPABILITY_CACHE[index]


class Backend:
    """Base class: a backend overrides the ops its spec lists, and ``availability`` when it needs
    something beyond torch (a library, the native build)."""

    spec: BackendSpec

    def availability(self) -> tuple[bool, str]:
        """(True, "") when everything this backend needs is installed, else (False, why)."""
        return True, ""

    def availability_on(self, device: torch.device) -> tuple[bool, str]:
        """``availability()`` for one device, for backends whose build covers some devices only."""
        return self.availability()

    def shape_limit(self, op: str, device: torch.device, m: int, n: int, k: int) -> str | None:
        """Why this backend cannot run mm op ``op`` for this shape on ``device``, for limits that
        depend on the device (the spec's ``shape_reason`` holds those that do not), or None."""
        return None

    def kernel_config(self, fmt: str, m: int, n: int, k: int) -> str:
        """The kernel configuration this backend would run for this shape ("" if it has none)."""
        return ""

    def takes_decoded_activation(self, op: str, device: torch.device, m: int) -> bool:
        """Whether mm op ``op`` ("mxfp8_mm" or "nvfp4_mm") with m activation rows on ``device`` runs
        here from the activation's decoded values (``mxfp8_mm_decoded`` / ``nvfp4_mm_decoded``)."""
        return False

    def can_quantize_dequantize(self, fmt: str) -> bool:
        """Whether this cast backend implements ``quantize_dequantize_{fmt}``: the activation rounded
        to the format's grid and decoded in one pass, for a GEMM that takes it decoded."""
        return False

    def quantize_mxfp8(self, x: torch.Tensor, scaling: str) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError(f"backend {self.spec.name!r} does not implement quantize_mxfp8")

    def quantize_nvfp4(
        self, x: torch.Tensor, tensor_scale: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError(f"backend {self.spec.name!r} does not implement quantize_nvfp4")

    def mxfp8_mm(self, a_q, a_s, b_q, b_s, bias, out_dtype) -> torch.Tensor:
        raise NotImplementedError(f"backend {self.spec.name!r} does not implement mxfp8_mm")

    def nvfp4_mm(self, a_q, a_s, a_ts, b_q, b_s, b_ts, bias, out_dtype) -> torch.Tensor:
        raise NotImplementedError(f"backend {self.spec.name!r} does not implement nvfp4_mm")

    def nvfp4_weight_only_mm(self, a, b_q, b_s, b_ts, bias) -> torch.Tensor:
        raise NotImplementedError(f"backend {self.spec.name!r} does not implement nvfp4_weight_only_mm")


class TritonBackend(Backend):
    """A backend whose kernels are written in Triton: available when triton is installed."""

    def availability(self) -> tuple[bool, str]:
        if not installed("triton"):
            return False, "triton is not installed (pip install 'triton>=3.6')"
        return True, ""
