"""The backend spec (what a backend supports, as data) and the interface every backend implements:
the public interface of your own backends too (``dq_kernels.register_backend``,
docs/own-backend.md).

All backends take and return the canonical operands described in ``dq_kernels.formats``. The ops
layer validates arguments before calling a backend, so backends may assume well-formed operands
within the limits their spec declares.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import dataclass
from typing import Callable

import torch

from .. import native

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
    """What a backend supports, as data. The registry selects from it (a backend is only called
    for an op, device and shape its spec allows); tests and the tools skip from it.

    ``name``: the name it is chosen by (``backend="name"``); ``description``: one line for
    ``dq-kernels info``. ``ops``: the ops it implements, from ``OPS``; each needs the method of
    the same name on the backend (``Backend.quantize_mxfp8`` ... ``Backend.nvfp4_weight_only_mm``).
    ``cpu``: whether it runs on CPU tensors. ``capabilities``: the CUDA compute capabilities it
    runs on, e.g. ((9, 0),) (None: any CUDA device); ``op_capabilities`` narrows them for single
    ops, as (op, capabilities) pairs. ``n_multiple`` / ``k_multiple``: the mm ops' N and K must be
    multiples of these (M rows of a, N rows of b, K the reduction); other limits go in
    ``Backend.shape_limit``.
    ``auto``: whether auto may rank it. Built-in backends are ranked by
    ``dq_kernels.backends.ranking``'s per-GPU functions alone (their ``auto`` documents it);
    ``register_backend(backend, auto=...)`` sets it for yours: False never, True after the
    built-in ranking, "first" before it.
    """

    name: str
    description: str
    ops: tuple[str, ...]
    cpu: bool = False
    capabilities: tuple[tuple[int, int], ...] | None = None
    op_capabilities: tuple[tuple[str, tuple[tuple[int, int], ...]], ...] = ()
    auto: bool | str = True
    n_multiple: int = 1
    k_multiple: int = 1

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


def cast_input(x: torch.Tensor) -> torch.Tensor:
    """x [..., K] as the [M, K] view the native casts read (unit column stride, row stride >= K,
    16-byte aligned rows), copied only where no such view exists."""
    x2 = x if x.dim() == 2 else x.reshape(-1, x.shape[-1])
    if not native.cast_layout_ok(x2):
        x2 = x2.clone(memory_format=torch.contiguous_format)
    return x2


def float32_bias(bias: torch.Tensor | None) -> torch.Tensor | None:
    """The bias as the sm_100a native kernels take it: None, or float32 [N], contiguous and 16-byte
    aligned (exact for every bias dtype; the reference adds it in float32 too). The sm_90a kernels
    read it in its own dtype."""
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
    """Base class of every backend: a subclass sets ``spec`` (a ``BackendSpec``), overrides the
    method of each op in ``spec.ops``, and ``availability`` when it needs something beyond torch (a
    library, a build). For your own backend that is all (``dq_kernels.register_backend``); the
    other hooks below (``availability_on``, ``kernel_config``, ``takes_decoded_activation``,
    ``can_quantize_dequantize``, ``fuses_linear``) have working defaults and serve the built-in backends.

    The op methods receive checked canonical operands (``dq_kernels.formats``), on one device,
    within the limits of the spec: contiguous row-major, M >= 1, K a multiple of the block size
    (32 for MXFP8, 16 for NVFP4). The mm methods compute a @ b.T + bias for a [M, K] and b [N, K]
    (b stored like an nn.Linear weight); bias is None or [N] of bfloat16, float16 or float32 (add
    it in float32). Operand layouts, per format:

    * MXFP8: q float8_e4m3fn [rows, K]; s uint8 E8M0 (2^(byte - 127); 255 is NaN) one per 32
      elements along K, 128x4 swizzled (``formats.to_blocked`` gives the byte offset of scale
      (row, block)), shape [round_up(rows, 128), round_up(K / 32, 4)]; the padding is zero as
      our quantizers write it, but scales made elsewhere may hold anything there: never let it
      reach an output.
    * NVFP4: q uint8 [rows, K / 2], two e2m1 codes per byte (element 2i in the low nibble);
      s float8_e4m3fn one per 16 elements, swizzled the same way, [round_up(rows, 128),
      round_up(K / 16, 4)]; ts a 0-dim float32 tensor scale: value = e2m1 * s * ts.

    What each method must return, on the operands' device (the ops check this on every call of
    a registered backend and raise naming the backend and the op otherwise):

    * ``quantize_mxfp8(x, scaling)``: x [M, K] bf16/fp16/fp32 (leading dims may remain: flatten
      them), scaling "rceil" or "floor" -> (q, s) as above for rows = M, bit-identical to
      ``formats.quantize_mxfp8``.
    * ``quantize_nvfp4(x, tensor_scale)``: tensor_scale None (compute amax / 2688) or a 0-dim
      float32 tensor -> (q, s, ts), bit-identical to ``formats.quantize_nvfp4``.
    * ``mxfp8_mm(a_q, a_s, b_q, b_s, bias, out_dtype)`` -> [M, N] of ``out_dtype`` (bf16, fp16
      or fp32).
    * ``nvfp4_mm(a_q, a_s, a_ts, b_q, b_s, b_ts, bias, out_dtype)`` -> [M, N] of ``out_dtype``.
    * ``nvfp4_weight_only_mm(a, b_q, b_s, b_ts, bias)``: a [M, K] bf16/fp16/fp32, not quantized
      -> [M, N] of a's dtype.

    Results must be new tensors (never an input, nor a view of one); the methods run inside
    custom ops, so under ``torch.compile`` too (fullgraph and CUDA graphs included: launch on the
    current stream, no host sync, no allocation outside torch's allocator).
    """

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
        here from the activation's decoded values (``mxfp8_mm_decoded`` / ``nvfp4_mm_decoded``).
        Under torch.compile with DQ_KERNELS_COMPILE_CAST=shared (the default) or fused, where this holds and the
        backend implements ``mxfp8_mm_decoded`` / ``nvfp4_mm_decoded``, a quantized Linear is
        traced as the decoded cast (once per traced activation) then that method's op
        (``ops.decoded_linear``, docs/compile.md)."""
        return False

    def can_quantize_dequantize(self, fmt: str) -> bool:
        """Whether this cast backend implements ``quantize_dequantize_{fmt}``: the activation rounded
        to the format's grid and decoded in one pass, for a GEMM that takes it decoded."""
        return False

    def fuses_linear(self, fmt: str, device: torch.device, m: int, dtype: torch.dtype) -> bool:
        """Whether this mm backend runs a whole quantized Linear of ``fmt`` for an activation of m
        rows and ``dtype`` on ``device`` in one call, its own cast included (``mxfp8_linear(x,
        b_q, b_s, bias, scaling)`` / ``nvfp4_linear(x, b_q, b_s, b_ts, activation_scale, bias)``,
        bit for bit the cast op and the mm op)."""
        return False

    def linear_launcher(
        self, fmt: str, device: torch.device, m: int, dtype: torch.dtype, b_q, b_s, bias, *,
        scaling: str = "rceil", b_ts=None, activation_scale=None,
    ) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """For a backend that ``fuses_linear``: ``run(x)``, the Linear ``mxfp8_linear`` /
        ``nvfp4_linear`` of this weight (b_q, b_s and, for NVFP4, b_ts), bias and options for an
        activation x [..., K] of m rows in all, of ``dtype`` on ``device``, returning [..., N] of
        x's dtype, with what does not depend on x prepared once (an eager quantized layer keeps it
        per weight, M and dtype: ``tensor.QuantizedWeight``). x may be any view; the operands are
        those the ops checked. ``run`` need not hold b_q and b_s (the weight's memory: the caller
        keeps them alive while it uses ``run``). None (the default): no launcher; the layer calls
        the backend's method."""
        return None

    def quantize_mxfp8(self, x: torch.Tensor, scaling: str) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError(f"backend {self.spec.name!r} does not implement quantize_mxfp8")

    def quantize_nvfp4(
        self, x: torch.Tensor, tensor_scale: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError(f"backend {self.spec.name!r} does not implement quantize_nvfp4")

    def quantize_dequantize_mxfp8(self, x: torch.Tensor, scaling: str) -> torch.Tensor:
        """For a backend whose ``can_quantize_dequantize("mxfp8")``: x [M, K] rounded to MXFP8 and
        decoded in one pass, bfloat16 [M, K], bit for bit ``formats.quantize_dequantize_mxfp8``."""
        raise NotImplementedError(f"backend {self.spec.name!r} does not implement quantize_dequantize_mxfp8")

    def quantize_dequantize_nvfp4(
        self, x: torch.Tensor, tensor_scale: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """For a backend whose ``can_quantize_dequantize("nvfp4")``: x [M, K] rounded to NVFP4 and
        decoded without its tensor scale, (float16 [M, K], the 0-dim float32 tensor scale), bit for
        bit ``formats.quantize_dequantize_nvfp4``."""
        raise NotImplementedError(f"backend {self.spec.name!r} does not implement quantize_dequantize_nvfp4")

    def mxfp8_mm(self, a_q, a_s, b_q, b_s, bias, out_dtype) -> torch.Tensor:
        raise NotImplementedError(f"backend {self.spec.name!r} does not implement mxfp8_mm")

    def nvfp4_mm(self, a_q, a_s, a_ts, b_q, b_s, b_ts, bias, out_dtype) -> torch.Tensor:
        raise NotImplementedError(f"backend {self.spec.name!r} does not implement nvfp4_mm")

    def nvfp4_weight_only_mm(self, a, b_q, b_s, b_ts, bias) -> torch.Tensor:
        raise NotImplementedError(f"backend {self.spec.name!r} does not implement nvfp4_weight_only_mm")

    def mxfp8_mm_decoded(self, a, b_q, b_s, bias, out_dtype) -> torch.Tensor:
        """``mxfp8_mm`` from the activation decoded to bfloat16: a bfloat16 [M, K]
        (``formats.quantize_dequantize_mxfp8``); the weight b [N, K] canonical. Returns [M, N] of
        ``out_dtype``."""
        raise NotImplementedError(f"backend {self.spec.name!r} does not implement mxfp8_mm_decoded")

    def nvfp4_mm_decoded(self, a, a_ts, b_q, b_s, b_ts, bias, out_dtype) -> torch.Tensor:
        """``nvfp4_mm`` from the activation decoded without its tensor scale: a float16 [M, K]
        holding e2m1 x block scale (``formats.quantize_dequantize_nvfp4``), a_ts its 0-dim float32
        tensor scale; the weight b [N, K] canonical. Returns [M, N] of ``out_dtype``."""
        raise NotImplementedError(f"backend {self.spec.name!r} does not implement nvfp4_mm_decoded")


class TritonBackend(Backend):
    """A backend whose kernels are written in Triton: available when triton is installed."""

    def availability(self) -> tuple[bool, str]:
        if not installed("triton"):
            return False, "triton is not installed (pip install 'triton>=3.6')"
        return True, ""
