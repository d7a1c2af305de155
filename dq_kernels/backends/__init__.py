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

Selections are cached per (op, device, M, N, K, the names in effect); every way of naming a
backend is part of the key, and ``_forget_selections`` empties the cache when the registry changes.

Your own backend (docs/own-backend.md): subclass ``Backend``, give it a ``BackendSpec``, and
``register_backend(MyBackend(), auto=...)``; from then on it is chosen by name everywhere a built-in
one is, and auto ranks it where ``auto`` says. ``unregister_backend(name)`` removes it.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
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
    "selection_scope",
    "plan_linear",
    "ranking",
    "env_backend",
    "ENV_BACKEND",
    "register_backend",
    "unregister_backend",
    "user_backends",
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
_BUILT_IN: dict[str, Backend] = dict(_REGISTRY)  # the backends we ship, by name (ranked by the functions below)
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
# MXFP8 with a weight of at most this many elements: the skinny kernel up to M = 16 (the sweep:
# 16x3072x3072, 9.4 M elements, skinny 1.11x vs triton_sm90 0.82x of bf16 cuBLAS; at 37.7 M and
# 56.6 M elements triton_sm90 wins, 1.27x / 1.26x vs 1.14x / 1.04x).
SM90_MXFP8_SMALL_WEIGHT = 1 << 24


def sm90_skinny_best_max_m(op: str, n: int, k: int) -> int:
    """The largest M at which the skinny kernels beat triton_sm90 on 9.0 for mm op ``op`` and a
    weight [n, k]."""
    if op == "mxfp8_mm" and n * k <= SM90_MXFP8_SMALL_WEIGHT:
        return 16
    return SM90_SKINNY_BEST_MAX_M[op]


# Above this M on 9.0, MXFP8 runs faster as its weight decoded into a bf16 buffer and cuBLAS
# (decode_cublas) than in the mixed-input kernel: 0.80-0.92x of bf16 cuBLAS against 0.73-0.84x at
# the six FLUX shapes of M 4096 / 4608, both ops; at M = 512 the kernel wins 2 of 3 shapes
# (benchmarks/results/gemm-h100.json). NVFP4's decode_cublas needs a float32 epilogue pass for its
# tensor scales and loses everywhere.
SM90_MXFP8_DECODE_CUBLAS_MIN_M = 2049


def _rank_cast(op: str) -> tuple[str, ...]:
    """The casts on 9.0, 10.x and 12.x: cutlass's CUDA cast first. Its GPU time equals triton_cast's
    for MXFP8 and beats it for NVFP4 (9.0 vs 13.8 us at 16 x 3072, 101 vs 105 us at 4096 x 12288 on
    the H100: docs/formats-and-layout.md), and its launch costs the host a few microseconds where a
    Triton launch costs tens (docs/host-path.md)."""
    return ("cutlass", "triton_cast")


def _rank_sm90(op: str, m: int, n: int, k: int) -> tuple[str, ...]:
    if op.startswith("quantize"):
        return _rank_cast(op)
    if sm90_skinny_best_max_m(op, n, k) < m <= SM90_SKINNY_MAX_M:
        return ("triton_sm90", "cutlass")
    if op == "mxfp8_mm" and m >= SM90_MXFP8_DECODE_CUBLAS_MIN_M:
        return ("decode_cublas", "cutlass", "triton_sm90")
    return ("cutlass", "triton_sm90")


def _rank_sm100(op: str, m: int, n: int, k: int) -> tuple[str, ...]:
    """10.0 / 10.3: our block-scaled kernels (compile-verified only), then cuBLAS through torchao,
    then the weight decoded for cuBLAS's bf16 GEMM (W4A16 has no block-scaled kernel here)."""
    if op.startswith("quantize"):
        return _rank_cast(op)
    if op == "nvfp4_weight_only_mm":
        return ("decode_cublas", "torchao")
    return ("cutlass", "triton_sm100", "torchao", "decode_cublas")


def _rank_sm120(op: str, m: int, n: int, k: int) -> tuple[str, ...]:
    """12.0 / 12.1 (RTX Blackwell, DGX Spark): the Triton block-scaled kernel (compile-verified
    only), then as on 10.0."""
    if op.startswith("quantize"):
        return _rank_cast(op)
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
    """The backends auto tries for ``op`` on ``device`` at this shape, best first: registered
    backends with ``spec.auto == "first"``, the built-in ranking of the device's compute capability,
    registered backends with ``spec.auto`` True, then the reference (each name once: a backend that
    replaced a built-in keeps the built-in's place)."""
    rank = _rank_cpu if device.type != "cuda" else RANKINGS.get(base.capability(device), _rank_other_cuda)
    registered = [(name, b.spec.auto) for name, b in _REGISTRY.items() if _BUILT_IN.get(name) is not b]
    first = tuple(name for name, auto in registered if auto == "first")
    after = tuple(name for name, auto in registered if auto is True)
    return tuple(dict.fromkeys(first + rank(op, m, n, k) + after + ("reference",)))


# ----------------------------------------------------------------------------------------------
# Your own backends (docs/own-backend.md)
# ----------------------------------------------------------------------------------------------

RESERVED_NAMES = {
    "": "an empty name",
    "auto": "the name of automatic selection",
    "cublas": "the benchmarks' name for the cuBLAS baselines",
}

# The backends register_backend added: their outputs are checked on every call (dq_kernels.ops).
user_backends: set[Backend] = set()


def register_backend(backend: Backend, *, auto: bool | str = False, replace: bool = False) -> Backend:
    """Add ``backend`` (an instance of a ``Backend`` subclass) to the registry under
    ``backend.spec.name``; returns it.

    From then on the name works everywhere a built-in backend's does: an op's ``backend=``,
    ``use_backend``, ``DQ_KERNELS_BACKEND``, ``MXFP8Config`` / ``NVFP4Config``, ``set_backend`` on a
    quantized model, the ``dq-kernels`` tools. ``auto``: False (default) runs it only where it is
    named; True lets auto take it after the built-in backends (before the reference); "first" lets
    auto try it before them (it must then refuse, through its spec or ``shape_limit``, what it
    cannot run). The registered backend's ``spec.auto`` is set to this value.

    ``replace``: needed to register a name that is already registered. Replacing a built-in
    backend (say "cutlass") runs yours wherever the built-in would run, auto's choices included;
    ``unregister_backend`` brings the built-in back.

    Raises TypeError / ValueError naming what is wrong: not a (hashable) Backend instance, a spec that is not
    a ``BackendSpec``, a reserved or taken name, an unknown op in ``spec.ops``, an op in
    ``spec.ops`` whose method the class does not override.
    """
    if isinstance(backend, type):
        raise TypeError(f"register_backend: pass an instance, {backend.__name__}(), not the class")
    if not isinstance(backend, Backend):
        raise TypeError(f"register_backend: backend must be an instance of a dq_kernels.Backend subclass, "
                        f"got {type(backend).__name__}")
    if type(backend).__hash__ is None:  # the selection caches key on backends
        raise TypeError(f"register_backend: {type(backend).__name__} must be hashable (a @dataclass backend "
                        f"needs eq=False)")
    spec = getattr(backend, "spec", None)
    if not isinstance(spec, BackendSpec):
        raise TypeError(f"register_backend: {type(backend).__name__}.spec must be a dq_kernels.BackendSpec, "
                        f"got {type(spec).__name__}")
    name = spec.name
    if not isinstance(name, str) or name in RESERVED_NAMES or name != name.strip():
        why = RESERVED_NAMES.get(name, "a name must be a non-empty string without surrounding spaces")
        raise ValueError(f"register_backend: {type(backend).__name__}.spec.name {name!r} cannot be used: {why}")
    if name in _REGISTRY and not replace:
        what = "a built-in backend" if _REGISTRY[name] is _BUILT_IN.get(name) else "already registered"
        raise ValueError(f"register_backend: the name {name!r} is {what}; pass replace=True to replace it "
                         f"(or choose another spec.name)")
    _check_spec_ops(backend)
    if auto is not False and auto is not True and auto != "first":
        raise ValueError(f"register_backend: auto must be False, True or 'first', got {auto!r}")
    previous = _REGISTRY.get(name)
    user_backends.discard(previous)
    backend.spec = dataclasses.replace(spec, auto=auto)
    _REGISTRY[name] = backend
    user_backends.add(backend)
    _forget_selections()
    return backend


def _check_spec_ops(backend: Backend) -> None:
    """``spec.ops``: a non-empty tuple of known op names, each overridden by the backend's class."""
    cls, ops = type(backend), backend.spec.ops
    if not isinstance(ops, tuple) or not ops or not all(isinstance(op, str) for op in ops):
        raise ValueError(f"register_backend: {cls.__name__}.spec.ops must be a non-empty tuple of op names "
                         f"from {OPS}, got {ops!r}")
    unknown = [op for op in ops if op not in OPS]
    if unknown:
        raise ValueError(f"register_backend: {cls.__name__}.spec.ops names unknown ops {unknown}; the ops are {OPS}")
    missing = [op for op in ops if getattr(cls, op) is getattr(Backend, op)]
    if missing:
        raise ValueError(f"register_backend: {cls.__name__}.spec.ops lists {missing} but {cls.__name__} does not "
                         f"implement {'it' if len(missing) == 1 else 'them'}: define the method(s) "
                         f"{', '.join(missing)} (see dq_kernels.Backend) or drop them from spec.ops")


def unregister_backend(name: str) -> Backend:
    """Remove the backend ``register_backend`` added as ``name`` and return it (a replaced built-in
    comes back). ValueError for a built-in backend or an unknown name."""
    backend = _REGISTRY.get(name)
    if backend is None:
        raise ValueError(f"unregister_backend: no backend is registered as {name!r}; known: {', '.join(_REGISTRY)}")
    if backend is _BUILT_IN.get(name):
        raise ValueError(f"unregister_backend: {name!r} is a built-in backend; only backends added with "
                         f"register_backend can be removed")
    if name in _BUILT_IN:
        _REGISTRY[name] = _BUILT_IN[name]
    else:
        del _REGISTRY[name]
    user_backends.discard(backend)
    _forget_selections()
    return backend


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


_SELECTED: dict[tuple, Backend] = {}
KEPT_SELECTIONS = 16384  # the selection and plan caches are emptied when they reach this many entries


_GENERATION = 0  # how many times the selection caches were emptied (selection_scope)


def selection_scope() -> tuple[str, int]:
    """What decides auto's choices beyond a call's own arguments: the backend name in effect
    (``use_backend``, else ``DQ_KERNELS_BACKEND``) and a count of the registry's changes. Caches
    of choices outside this module (the eager launchers of quantized weights) key on it."""
    return _CHOSEN.get() or env_backend(), _GENERATION


def _forget_selections() -> None:
    """Empty the selection caches (the registry or a backend's availability changed), and check
    ``DQ_KERNELS_BACKEND`` against the registry again at its next read."""
    global _ENV_CHECKED, _GENERATION
    _GENERATION += 1
    _SELECTED.clear()
    _PLANS.clear()
    _LOGGED.clear()
    _ENV_CHECKED = (None, "auto")


def select(
    op: str, device: torch.device, m: int, n: int, k: int, requested: str | None = None, preferred: str | None = None
) -> Backend:
    """The backend that runs ``op`` on ``device`` for an [m, k] x [n, k]^T problem (n = k = K for
    quantize ops). ``requested``: the call's ``backend=`` (strict); ``preferred``: a quantized
    weight's backend (where it cannot run, the ``use_backend`` / ``DQ_KERNELS_BACKEND`` / auto choice
    runs instead). See the module docstring for the rules. Cached per exact shape: a backend's limits
    may depend on M."""
    scoped = _CHOSEN.get() or env_backend()
    if requested is not None:  # "" is a name too, and an unknown one
        name, how = requested, "requested"
    elif preferred and preferred != "auto":
        name, how = preferred, "preferred"
    else:
        name, how = scoped, "scoped"
    key = (op, device, m, n, k, name, how, scoped)
    backend = _SELECTED.get(key)
    if backend is None:
        if len(_SELECTED) >= KEPT_SELECTIONS:
            _SELECTED.clear()
        backend = _SELECTED[key] = _decide(op, device, m, n, k, name, how, scoped)
    return backend


def _decide(op: str, device: torch.device, m: int, n: int, k: int, name: str, how: str, scoped: str) -> Backend:
    assert op in OPS, op
    if how == "preferred":
        backend = _REGISTRY.get(name)
        if backend is None:
            _log_once(op, name, "no backend of this name is registered here (a quantized weight's backend is a "
                      "preference: the scoped or auto choice runs it instead; load the plugin that registers it)")
        elif op in backend.spec.ops:
            reason = _reason(backend, op, device, m, n, k)
            if reason is None:
                return backend
            _log_once(op, name, f"{reason} (a quantized weight's backend is a preference: the scoped or auto "
                      "choice runs it instead)")
        return _decide(op, device, m, n, k, scoped, "scoped", scoped)
    if name != "auto":
        backend = get_backend(name)
        if how == "requested" or op in backend.spec.ops:
            reason = _reason(backend, op, device, m, n, k)
            if reason is None:
                return backend
            raise BackendUnavailableError(
                f"dq_kernels backend {name!r} cannot run {op} on {device} (M={m}, N={n}, K={k}): {reason}"
            )
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
    activation is never written; with ``fused`` the mm backend runs the whole Linear in one call
    (``mxfp8_linear`` / ``nvfp4_linear``: its own cast and its GEMM, for the host time of one call)
    and ``cast`` is not used. The result is the same bit for bit either way."""

    cast: Backend
    mm: Backend
    decoded: bool
    fused: bool
    checked: bool  # whether either step runs on a registered backend, whose outputs ops checks


_PLANS: dict[tuple, LinearPlan] = {}


def plan_linear(
    fmt: str, device: torch.device, m: int, n: int, k: int, dtype: torch.dtype, cast_backend: str | None,
    mm_backend: str | None, preferred: str | None = None,
) -> LinearPlan:
    """The plan of a quantized Linear of ``fmt`` ("mxfp8" or "nvfp4") for x [m, k] of ``dtype`` and
    a weight [n, k]: the two steps selected as ``select`` does (``cast_backend`` / ``mm_backend``
    are their ``backend=`` arguments, ``preferred`` the weight's backend); whether the mm backend
    runs the Linear fused (it offers that for this device, M and dtype, and the cast is not one the
    call named nor a registered backend, which would then not run); else whether the one-pass
    decoded hand-over applies (the mm backend's kernel takes its activation decoded at this M, and
    the cast backend can produce it). Cached per call and the scoped name in effect, as ``select``."""
    key = (fmt, device, m, n, k, dtype, cast_backend, mm_backend, preferred, _CHOSEN.get() or env_backend())
    plan = _PLANS.get(key)
    if plan is None:
        if len(_PLANS) >= KEPT_SELECTIONS:
            _PLANS.clear()
        cast = select(f"quantize_{fmt}", device, m, k, k, cast_backend, preferred)
        mm = select(f"{fmt}_mm", device, m, n, k, mm_backend, preferred)
        fused = cast_backend is None and cast not in user_backends and mm.fuses_linear(fmt, device, m, dtype)
        decoded = not fused and mm.takes_decoded_activation(f"{fmt}_mm", device, m) and cast.can_quantize_dequantize(fmt)
        checked = cast in user_backends or mm in user_backends
        plan = _PLANS[key] = LinearPlan(cast, mm, decoded, fused, checked)
    return plan
