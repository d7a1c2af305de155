"""Backend registry and selection.

A call runs on the backend named by, in this order: the call's ``backend=`` argument, the innermost
``with use_backend(name):``, the environment variable ``DQ_KERNELS_BACKEND``, else ``"auto"``.

* A backend named by the call's argument must be able to run the call, or the call raises
  ``BackendUnavailableError`` saying why.
* A backend named by ``use_backend`` or the environment applies to the ops it implements, with the
  same strictness; ops it does not implement (say, quantize for a GEMM-only backend) go to auto.
* ``auto`` takes the first backend, in registry order (fastest first), whose spec allows the op,
  device and shape, whose dependencies are installed and that does not defer to a later backend
  for this shape (``Backend.auto_passes``: a later one is faster there). When it passes over a
  backend that would suit this device but cannot run, it logs why once.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
from dataclasses import dataclass

import torch

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
    "available_backends",
    "get_backend",
    "backend_names",
    "use_backend",
    "select",
    "ENV_BACKEND",
]

ENV_BACKEND = "DQ_KERNELS_BACKEND"
logger = logging.getLogger("dq_kernels")

# Registry order is auto's preference order: fastest first, the reference last among those auto may
# pick (triton_stock, a comparison backend, comes after it and auto never takes it).
_REGISTRY: dict[str, Backend] = {
    b.spec.name: b
    for b in (
        CutlassBackend(),  # on Hopper except 8/32 < M <= 64 (auto_passes), where triton_sm90 is faster
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


@contextlib.contextmanager
def use_backend(name: str):
    """Run the dq_kernels ops inside the block on backend ``name`` (or ``"auto"``)."""
    if name != "auto":
        get_backend(name)
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


def select(op: str, device: torch.device, m: int, n: int, k: int, requested: str | None = None) -> Backend:
    """The backend that runs ``op`` on ``device`` for an [m, k] x [n, k]^T problem (n = k = K for
    quantize ops). See the module docstring for the rules."""
    assert op in OPS, op
    strict = requested is not None
    name = requested or _CHOSEN.get() or os.environ.get(ENV_BACKEND) or "auto"
    if name != "auto":
        backend = get_backend(name)
        if strict or op in backend.spec.ops:
            reason = _reason(backend, op, device, m, n, k)
            if reason is not None:
                raise BackendUnavailableError(
                    f"dq_kernels backend {name!r} cannot run {op} on {device} (M={m}, N={n}, K={k}): {reason}"
                )
            return backend
    for backend in _REGISTRY.values():
        if not backend.spec.auto:
            continue
        reason = _reason(backend, op, device, m, n, k)
        if reason is None:
            if backend.auto_passes(op, device, m, n, k) is None:
                return backend
            continue
        if backend.spec.device_reason(device, op) is None and op in backend.spec.ops:
            _log_once(op, backend.spec.name, reason)
    raise BackendUnavailableError(f"no dq_kernels backend can run {op} on {device} (M={m}, N={n}, K={k})")


def _log_once(op: str, name: str, reason: str) -> None:
    key = (op, name, reason)
    if key not in _LOGGED:
        _LOGGED.add(key)
        logger.warning("dq_kernels auto: skipping backend %r for %s: %s", name, op, reason)
