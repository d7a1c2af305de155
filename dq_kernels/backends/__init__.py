"""Backend registry and selection.

A call runs on the backend named by, in this order: the call's ``backend=`` argument, the quantized
weight's own backend (for the layers of a quantized model), the innermost ``with use_backend(name):``,
the environment variable ``DQ_KERNELS_BACKEND``, else ``"auto"``.

* A backend named by the call's argument must be able to run the call, or the call raises
  ``BackendUnavailableError`` saying why.
* A weight's backend (``select(..., preferred=name)``) is a preference: where it cannot run (a
  checkpoint saved with a backend this machine lacks), auto runs the call instead, with one warning.
* A backend named by ``use_backend`` or the environment applies to the ops it implements, with the
  same strictness as the call's argument; ops it does not implement (say, quantize for a GEMM-only
  backend) go to auto.
* ``auto`` walks ``ranking(op, device, m, n, k)``, the one place that knows which kernel wins
  where, and takes the first backend that can run the call; when it passes over a backend that
  would suit this device but cannot run, it logs why once.

Selections are cached per (op, device, M bucket, N, K, the name in effect); every way of naming a
backend is part of the key, and ``_forget_selections`` empties the cache when the registry changes.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
from dataclasses import dataclass

import torch

from . import base
from .base import OPS, Backend, BackendSpec, BackendUnavailableError
from .cutlass import CutlassBackend
from .decode_cublas import DecodeCublasBackend
from .reference import ReferenceBackend
from .torchao import TorchAOBackend
from .triton_cast import TritonCastBackend
from .triton_sm90 import TritonSm90Backend
from .triton_sm100 import TritonSm100Backend
from .triton_stock import TritonStockBackend

__all__ = [
    "Backend",
    "BackendSpec",
    "BackendStatus",
    "BackendUnavailableError",
    "LinearPlan",
    "available_backends",
    "get_backend",
    "backend_names",
    "use_backend",
    "select",
    "plan_linear",
    "ranking",
    "env_backend",
    "ENV_BACKEND",
]

ENV_BACKEND = "DQ_KERNELS_BACKEND"
logger = logging.getLogger("dq_kernels")

_REGISTRY: dict[str, Backend] = {
    b.spec.name: b
    for b in (
        CutlassBackend(),
        TritonSm90Backend(),
        TritonSm100Backend(),
        TritonCastBackend(),
        TorchAOBackend(),
        DecodeCublasBackend(),
        ReferenceBackend(),
        TritonStockBackend(),
    )
}
_CHOSEN: contextvars.ContextVar[str | None] = contextvars.ContextVar("dq_kernels_backend", default=None)
_LOGGED: set[tuple[str, str, str]] = set()


def backend_names() -> list[str]:
    return list(_REGISTRY)


def get_backend(name: str) -> Backend:
    """The backend registered as ``name``; ValueError listing the names if there is none."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown dq_kernels backend {name!r}; known: {', '.join(_REGISTRY)} or 'auto'") from None


def _check_name(name: str, where: str) -> str:
    """``name`` if it is "auto" or a registered backend, else ValueError naming ``where`` it came from."""
    if name != "auto" and name not in _REGISTRY:
        raise ValueError(f"{where}: unknown dq_kernels backend {name!r}; known: {', '.join(_REGISTRY)} or 'auto'")
    return name


_ENV_CHECKED: tuple[str | None, str] = (None, "auto")  # (the variable's last value, the name it gives)


def env_backend() -> str:
    """The backend ``DQ_KERNELS_BACKEND`` names ("auto" when unset or empty). The one place that
    reads the variable; an unknown name raises ValueError naming the variable."""
    global _ENV_CHECKED
    value = os.environ.get(ENV_BACKEND)
    if value != _ENV_CHECKED[0]:
        name = _check_name(value or "auto", f"the environment variable {ENV_BACKEND}={value!r}")
        _ENV_CHECKED = (value, name)
    return _ENV_CHECKED[1]


@contextlib.contextmanager
def use_backend(name: str):
    """Run the dq_kernels ops inside the block on backend ``name`` (or ``"auto"``)."""
    _check_name(name, "use_backend")
    token = _CHOSEN.set(name)
    try:
        yield
    finally:
        _CHOSEN.reset(token)


@dataclass(frozen=True)
class BackendStatus:
    name: str
    available: bool
    reason: str  # why it is unavailable, or where it runs when available
    formats: tuple[str, ...]
    description: str
    ops: tuple[str, ...]  # the dq_kernels ops it implements, e.g. "mxfp8_mm"


def available_backends() -> list[BackendStatus]:
    """Every registered backend, whether it can run here (installed, and a device it supports is
    present), and why."""
    cuda_device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else None
    statuses = []
    for backend in _REGISTRY.values():
        spec = backend.spec
        ok, why = backend.availability()
        if ok:
            devices = [d for d in (cuda_device, torch.device("cpu")) if d is not None and spec.device_reason(d) is None]
            on_cuda = backend.availability_on(cuda_device) if cuda_device in devices else None
            if on_cuda is not None and not on_cuda[0]:
                devices.remove(cuda_device)
            if devices:
                why = "runs on " + " and ".join(str(d) for d in devices)
                if cuda_device in devices:
                    limits = [spec.device_reason(cuda_device, op) for op in spec.ops]
                    why += "".join(f"; {limit}" for limit in limits if limit)
            else:
                ok = False
                if cuda_device is None:
                    why = "needs a CUDA device; none is present"
                else:
                    why = spec.device_reason(cuda_device) or on_cuda[1]
        statuses.append(BackendStatus(spec.name, ok, why, spec.formats, spec.description, spec.ops))
    return statuses


# ----------------------------------------------------------------------------------------------
# The decision: which backend auto runs where (measurements: docs/backend-selection.md)
# ----------------------------------------------------------------------------------------------

# On 9.0 the sm_90a skinny kernels (cutlass, M <= 64) win up to these M; above them, up to
# M = 64, triton_sm90's split-K kernels do (the small-M sweep of docs/skinny-kernels.md).
SM90_SKINNY_BEST_MAX_M = {"mxfp8_mm": 8, "nvfp4_mm": 64, "nvfp4_weight_only_mm": 32}
SM90_SKINNY_MAX_M = 64  # native.SM90_SKINNY_MAX_M: the largest M the skinny kernels take


# Above this M on 9.0, MXFP8 runs faster as its weight decoded into a bf16 buffer and cuBLAS
# (decode_cublas) than in the mixed-input kernel: 0.80-0.92x of bf16 cuBLAS against 0.73-0.84x at
# the six FLUX shapes of M 4096 / 4608, both ops; at M = 512 the kernel wins 2 of 3 shapes
# (benchmarks/results/gemm-h100.json). NVFP4's decode_cublas needs a float32 epilogue pass for its
# tensor scales and loses everywhere.
SM90_MXFP8_DECODE_CUBLAS_MIN_M = 2049


def _rank_sm90(op: str, m: int, n: int, k: int) -> tuple[str, ...]:
    if op.startswith("quantize"):
        return ("triton_cast",)
    if SM90_SKINNY_BEST_MAX_M[op] < m <= SM90_SKINNY_MAX_M:
        return ("triton_sm90", "cutlass")
    if op == "mxfp8_mm" and m >= SM90_MXFP8_DECODE_CUBLAS_MIN_M:
        return ("decode_cublas", "cutlass", "triton_sm90")
    return ("cutlass", "triton_sm90")


def _rank_sm100(op: str, m: int, n: int, k: int) -> tuple[str, ...]:
    """10.0 / 10.3: our block-scaled kernels (compile-verified only), then cuBLAS through torchao,
    then the weight decoded for cuBLAS's bf16 GEMM (W4A16 has no block-scaled kernel here)."""
    if op.startswith("quantize"):
        return ("triton_cast",)
    if op == "nvfp4_weight_only_mm":
        return ("decode_cublas", "torchao")
    return ("cutlass", "triton_sm100", "torchao", "decode_cublas")


def _rank_sm120(op: str, m: int, n: int, k: int) -> tuple[str, ...]:
    """12.0 / 12.1 (RTX Blackwell, DGX Spark): the Triton block-scaled kernel (compile-verified
    only), then as on 10.0."""
    if op.startswith("quantize"):
        return ("triton_cast",)
    if op == "nvfp4_weight_only_mm":
        return ("decode_cublas", "torchao")
    return ("triton_sm100", "torchao", "decode_cublas")


def _rank_other_cuda(op: str, m: int, n: int, k: int) -> tuple[str, ...]:
    """Any other CUDA GPU: the Triton cast where it compiles, the weight decoded for cuBLAS."""
    return ("triton_cast",) if op.startswith("quantize") else ("decode_cublas",)


def _rank_cpu(op: str, m: int, n: int, k: int) -> tuple[str, ...]:
    """CPU tensors: the reference (appended by ``ranking``) is the path."""
    return ()


RANKINGS = {(9, 0): _rank_sm90, (10, 0): _rank_sm100, (10, 3): _rank_sm100, (12, 0): _rank_sm120, (12, 1): _rank_sm120}


def ranking(op: str, device: torch.device, m: int, n: int, k: int) -> tuple[str, ...]:
    """The backends auto tries for ``op`` on ``device`` at this shape, best first: the built-in
    ranking of the device's compute capability, then any other backend whose spec lets auto take
    it, then the reference."""
    rank = _rank_cpu if device.type != "cuda" else RANKINGS.get(base.capability(device), _rank_other_cuda)
    built_in = rank(op, m, n, k)
    others = tuple(name for name, b in _REGISTRY.items() if b.spec.auto and name not in _BUILT_IN_NAMES)
    return built_in + others + ("reference",)


_BUILT_IN_NAMES = frozenset(_REGISTRY)  # ranked by the functions above only


# ----------------------------------------------------------------------------------------------
# Selection
# ----------------------------------------------------------------------------------------------


def _reason(backend: Backend, op: str, device: torch.device, m: int, n: int, k: int) -> str | None:
    spec = backend.spec
    if op not in spec.ops:
        return f"does not implement {op}"
    reason = spec.device_reason(device, op) or spec.shape_reason(op, m, n, k)
    if reason is None and op.endswith("_mm"):
        reason = backend.shape_limit(op, device, m, n, k)
    if reason is None:
        ok, why = backend.availability_on(device)
        reason = None if ok else why
    return reason


def _m_bucket(m: int) -> int:
    """M as the cache key: exact up to the skinny range, then its power-of-two ceiling (rankings
    change only at powers of two plus one)."""
    return m if m <= SM90_SKINNY_MAX_M else 1 << (m - 1).bit_length()


_SELECTED: dict[tuple, Backend] = {}


def _forget_selections() -> None:
    """Empty the selection caches (the registry or a backend's availability changed)."""
    _SELECTED.clear()
    _PLANS.clear()
    _LOGGED.clear()


def select(
    op: str, device: torch.device, m: int, n: int, k: int, requested: str | None = None, preferred: str | None = None
) -> Backend:
    """The backend that runs ``op`` on ``device`` for an [m, k] x [n, k]^T problem (n = k = K for
    quantize ops). ``requested``: the call's ``backend=`` (strict); ``preferred``: a quantized
    weight's backend (auto's choice where it cannot run). See the module docstring for the rules."""
    if requested is not None:  # "" is a name too, and an unknown one
        name, how = requested, "requested"
    elif preferred and preferred != "auto":
        name, how = preferred, "preferred"
    else:
        name, how = _CHOSEN.get() or env_backend(), "scoped"
    key = (op, device, _m_bucket(m), n, k, name, how)
    backend = _SELECTED.get(key)
    if backend is None:
        backend = _SELECTED[key] = _decide(op, device, m, n, k, name, how)
    return backend


def _decide(op: str, device: torch.device, m: int, n: int, k: int, name: str, how: str) -> Backend:
    assert op in OPS, op
    if name != "auto":
        backend = get_backend(name)
        if how == "requested" or op in backend.spec.ops:
            reason = _reason(backend, op, device, m, n, k)
            if reason is None:
                return backend
            if how != "preferred":
                raise BackendUnavailableError(
                    f"dq_kernels backend {name!r} cannot run {op} on {device} (M={m}, N={n}, K={k}): {reason}"
                )
            _log_once(op, name, f"{reason} (a quantized weight's backend is a preference: auto runs it instead)")
    for candidate in ranking(op, device, m, n, k):
        backend = _REGISTRY.get(candidate)
        if backend is None:
            continue
        reason = _reason(backend, op, device, m, n, k)
        if reason is None:
            if candidate == "reference" and device.type == "cuda" and op.endswith("_mm"):
                _log_once(op, "reference", "auto runs the float32 reference for a GEMM on this GPU: no faster "
                          "backend can run it (the reasons above); expect it to be slow")
            return backend
        if backend.spec.device_reason(device, op) is None and op in backend.spec.ops:
            _log_once(op, candidate, reason)
    raise BackendUnavailableError(f"no dq_kernels backend can run {op} on {device} (M={m}, N={n}, K={k})")


def _log_once(op: str, name: str, reason: str) -> None:
    key = (op, name, reason)
    if key not in _LOGGED:
        _LOGGED.add(key)
        if name == "reference":
            logger.warning("dq_kernels auto: %s: %s", op, reason)
        else:
            logger.warning("dq_kernels auto: skipping backend %r for %s: %s", name, op, reason)


@dataclass(frozen=True)
class LinearPlan:
    """How a quantized Linear of one format runs: ``cast`` quantizes the activation and ``mm`` runs
    the GEMM; with ``decoded`` the cast hands the GEMM its activation rounded to the format's grid
    and decoded (``quantize_dequantize_*`` then ``*_mm_decoded``), in one pass, so the quantized
    activation is never written."""

    cast: Backend
    mm: Backend
    decoded: bool


_PLANS: dict[tuple, LinearPlan] = {}


def plan_linear(
    fmt: str, device: torch.device, m: int, n: int, k: int, cast_backend: str | None, mm_backend: str | None,
    preferred: str | None = None,
) -> LinearPlan:
    """The plan of a quantized Linear of ``fmt`` ("mxfp8" or "nvfp4") for x [m, k] and a weight
    [n, k]: the two steps selected as ``select`` does (``cast_backend`` / ``mm_backend`` are their
    ``backend=`` arguments, ``preferred`` the weight's backend), and whether the one-pass decoded
    hand-over applies (the mm backend's kernel takes its activation decoded at this M, and the cast
    backend can produce it)."""
    cast = select(f"quantize_{fmt}", device, m, k, k, cast_backend, preferred)
    mm = select(f"{fmt}_mm", device, m, n, k, mm_backend, preferred)
    key = (cast, mm, fmt, device, _m_bucket(m))
    plan = _PLANS.get(key)
    if plan is None:
        decoded = mm.takes_decoded_activation(f"{fmt}_mm", device, m) and cast.can_quantize_dequantize(fmt)
        plan = _PLANS[key] = LinearPlan(cast, mm, decoded)
    return plan
