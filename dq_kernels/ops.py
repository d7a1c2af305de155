"""The ``dq_kernels::*`` torch custom ops: schemas (defined once, here), fake implementations, and
dispatch to the backend chosen by ``dq_kernels.backends.select``.

Every op checks its arguments (dtype, shape, scale size, device, contiguity, M >= 1) in both the
real and the fake implementation, so a bad call raises a ``TypeError``/``ValueError`` naming the
argument before any kernel runs, in eager mode and while ``torch.compile`` traces.

Schemas::

    quantize_mxfp8(Tensor x, str scaling, str? backend) -> (Tensor q, Tensor s)
    quantize_nvfp4(Tensor x, Tensor? tensor_scale, str? backend) -> (Tensor q, Tensor s, Tensor tensor_scale)
    quantize_dequantize_mxfp8(Tensor x, str scaling, str? backend) -> Tensor
    quantize_dequantize_nvfp4(Tensor x, Tensor? tensor_scale, str? backend) -> (Tensor values, Tensor tensor_scale)
    dequantize_mxfp8(Tensor q, Tensor s, ScalarType dtype) -> Tensor
    dequantize_nvfp4(Tensor q, Tensor s, Tensor tensor_scale, ScalarType dtype) -> Tensor
    mxfp8_mm(Tensor a_q, Tensor a_s, Tensor b_q, Tensor b_s, Tensor? bias, ScalarType out_dtype, str? backend) -> Tensor
    nvfp4_mm(Tensor a_q, Tensor a_s, Tensor a_ts, Tensor b_q, Tensor b_s, Tensor b_ts, Tensor? bias,
             ScalarType out_dtype, str? backend) -> Tensor
    nvfp4_weight_only_mm(Tensor a, Tensor b_q, Tensor b_s, Tensor b_ts, Tensor? bias, str? backend) -> Tensor
    mxfp8_linear(Tensor x, Tensor b_q, Tensor b_s, Tensor? bias, str scaling, str? cast_backend,
                 str? mm_backend) -> Tensor
    nvfp4_linear(Tensor x, Tensor b_q, Tensor b_s, Tensor b_ts, Tensor? activation_scale, Tensor? bias,
                 str? cast_backend, str? mm_backend) -> Tensor
    mxfp8_mm_decoded(Tensor values, Tensor b_q, Tensor b_s, Tensor? bias, ScalarType out_dtype,
                     str? backend) -> Tensor
    nvfp4_mm_decoded(Tensor values, Tensor x_ts, Tensor b_q, Tensor b_s, Tensor b_ts, Tensor? bias,
                     ScalarType out_dtype, str? backend) -> Tensor

The mm ops compute a @ b.T: a [M, K] and b [N, K] (b stored like a Linear weight) in the canonical
format of ``dq_kernels.formats``; the output is [M, N] of ``out_dtype``, bias [N] added in the
epilogue. ``nvfp4_weight_only_mm`` (W4A16) takes a in high precision and returns a's dtype.
The linear ops are a quantized Linear in one op: the cast op on x [M, K] then the mm op, returning
x's dtype; where the mm backend runs the whole Linear (``fuses_linear``: cutlass on 9.0, its CUDA
cast and GEMM from one native call) the op is one backend call; else where the mm backend
takes its activation decoded (``takes_decoded_activation``) and the cast backend can round to the
format's grid and decode in one pass, the quantized activation is never written. Same result every
way (``backends.plan_linear`` decides). The decoded casts (``quantize_dequantize_*``: x rounded to
the format's grid and decoded, one pass) and the decoded mm ops (``mxfp8_mm_decoded``,
``nvfp4_mm_decoded``) are the two halves of that hand-over as ops of their own: by default
(DQ_KERNELS_COMPILE_CAST=shared) a quantized Linear traced by torch.compile is traced as them where
its mm backend takes the decoded activation (``decoded_linear``), its cast made once per traced
activation, so that the Linears reading one activation (FLUX's q, k, v and MLP input projections)
share one cast (``traced_cast``); DQ_KERNELS_COMPILE_CAST=op keeps the linear op, and =fused
(opt-in) traces the cast as torch ops that inductor fuses into the op before it (docs/compile.md).

A backend added with ``dq_kernels.register_backend`` has what it returns checked on every call
(``_check_outputs``: shape, dtype and device, no sync); a wrong result raises naming the backend
and the op. The built-in backends are not checked.
"""

from __future__ import annotations

import contextlib
import os
import weakref
from typing import Callable

import torch
from torch import Tensor
from torch._subclasses.fake_tensor import is_fake
from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

from . import formats
from .backends import Backend, BackendUnavailableError, LinearPlan, plan_linear, reference, select, user_backends
from .formats import MXFP8, NVFP4, Format

__all__ = [
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
]


def _op(schema: str):
    name, _, rest = schema.partition("(")
    return torch.library.custom_op(f"dq_kernels::{name}", mutates_args=(), schema="(" + rest)


# ----------------------------------------------------------------------------------------------
# Argument checks (shared by real and fake implementations)
# ----------------------------------------------------------------------------------------------


def _check_mm(fn, fmt, a_q, a_s, b_q, b_s, bias, out_dtype) -> tuple[int, int, int]:
    """Check mm operands; return (M, N, K)."""
    m, k = formats.check_quantized(fn, fmt, "a_q", a_q, "a_s", a_s)
    n = _check_weight_and_bias(fn, fmt, "a_q", a_q, k, b_q, b_s, bias)
    formats.check_output_dtype(fn, out_dtype)
    return m, n, k


def _check_weight_and_bias(fn, fmt, a_name, a, k, b_q, b_s, bias) -> int:
    """Check the weight b [N, K] (and bias [N]) against the activation ``a`` of K columns; return N."""
    n, k_b = formats.check_quantized(fn, fmt, "b_q", b_q, "b_s", b_s)
    if k_b != k:
        raise ValueError(f"{fn}: {a_name} holds K = {k} but b_q holds K = {k_b} (b is [N, K], like a Linear weight)")
    if b_q.device != a.device:
        raise ValueError(f"{fn}: b_q is on {b_q.device} but {a_name} is on {a.device}")
    if bias is not None:
        if bias.dtype not in formats.HIGH_PRECISION_DTYPES:
            raise TypeError(f"{fn}: bias must be bfloat16, float16 or float32, got {bias.dtype}")
        if tuple(bias.shape) != (n,):
            raise ValueError(f"{fn}: bias must have shape [N] = [{n}], got {tuple(bias.shape)}")
        if bias.device != a.device:
            raise ValueError(f"{fn}: bias is on {bias.device} but {a_name} is on {a.device}")
    return n


def _rows_and_k(x: Tensor) -> tuple[int, int]:
    return x.numel() // x.shape[-1], x.shape[-1]


# ----------------------------------------------------------------------------------------------
# What a backend returns (the fake implementations build it; registered backends are checked)
# ----------------------------------------------------------------------------------------------

Outputs = tuple[tuple[tuple[int, ...], torch.dtype], ...]  # (shape, dtype) of each output


def _cast_outputs(fmt: Format, m: int, k: int) -> Outputs:
    """The outputs of a cast of [m, k] to ``fmt``: q, the swizzled scales, and NVFP4's 0-dim
    float32 tensor scale."""
    outputs = ((fmt.qdata_shape(m, k), fmt.qdata_dtype), (fmt.scale_shape(m, k), fmt.scale_dtype))
    return outputs + (((), torch.float32),) if fmt.has_tensor_scale else outputs


def _check_outputs(backend: Backend, op: str, got, expected: Outputs, device: torch.device) -> None:
    """Raise RuntimeError naming the backend and the op unless ``got`` (a tensor, or a tuple of
    them for a cast) has the ``expected`` shapes and dtypes on ``device``. For registered backends
    (``backends.user_backends``): metadata only, so it costs no sync."""
    outputs = got if isinstance(got, tuple) else (got,)
    if len(outputs) == len(expected) and all(
        isinstance(t, Tensor) and tuple(t.shape) == shape and t.dtype == dtype and t.device == device
        and t.is_contiguous()
        for t, (shape, dtype) in zip(outputs, expected)
    ):
        return
    want = ", ".join(f"contiguous {dtype} {list(shape)}" for shape, dtype in expected)
    have = ", ".join(
        f"{t.dtype} {list(t.shape)} on {t.device}" if isinstance(t, Tensor) else type(t).__name__ for t in outputs
    )
    raise RuntimeError(
        f"dq_kernels backend {backend.spec.name!r} returned a wrong result from {op}: expected {want} on {device}, "
        f"got {have} (what each op must return: the docstring of dq_kernels.Backend.{op})"
    )


# ----------------------------------------------------------------------------------------------
# Quantize
# ----------------------------------------------------------------------------------------------


@_op("quantize_mxfp8(Tensor x, str scaling, str? backend) -> (Tensor, Tensor)")
def _quantize_mxfp8(x: Tensor, scaling: str, backend: str | None) -> tuple[Tensor, Tensor]:
    _check_quantize_mxfp8(x, scaling)
    m, k = _rows_and_k(x)
    chosen = select("quantize_mxfp8", x.device, m, k, k, backend)
    with _on_device(x):
        result = chosen.quantize_mxfp8(x, scaling)
    if chosen in user_backends:
        _check_outputs(chosen, "quantize_mxfp8", result, _cast_outputs(MXFP8, m, k), x.device)
    return result


def _check_quantize_mxfp8(x, scaling):
    fn = "dq_kernels.quantize_mxfp8"
    formats.check_high_precision(fn, "x", x, MXFP8.block_size)
    _check_scaling(fn, scaling)


def _check_scaling(fn, scaling):
    if scaling not in formats.SCALING_MODES:
        raise ValueError(f"{fn}: scaling must be one of {formats.SCALING_MODES}, got {scaling!r}")


@_quantize_mxfp8.register_fake
def _(x, scaling, backend):
    _check_quantize_mxfp8(x, scaling)
    m, k = _rows_and_k(x)
    return tuple(x.new_empty(shape, dtype=dtype) for shape, dtype in _cast_outputs(MXFP8, m, k))


@_op("quantize_nvfp4(Tensor x, Tensor? tensor_scale, str? backend) -> (Tensor, Tensor, Tensor)")
def _quantize_nvfp4(x: Tensor, tensor_scale: Tensor | None, backend: str | None) -> tuple[Tensor, Tensor, Tensor]:
    _check_quantize_nvfp4(x, tensor_scale)
    m, k = _rows_and_k(x)
    chosen = select("quantize_nvfp4", x.device, m, k, k, backend)
    with _on_device(x):
        result = chosen.quantize_nvfp4(x, tensor_scale)
    if chosen in user_backends:
        _check_outputs(chosen, "quantize_nvfp4", result, _cast_outputs(NVFP4, m, k), x.device)
    q, s, ts = result
    if tensor_scale is not None and ts.untyped_storage().data_ptr() == tensor_scale.untyped_storage().data_ptr():
        ts = ts.clone()  # an op's outputs must not alias its inputs
    return q, s, ts


def _check_quantize_nvfp4(x, tensor_scale):
    fn = "dq_kernels.quantize_nvfp4"
    formats.check_high_precision(fn, "x", x, NVFP4.block_size)
    if tensor_scale is not None:
        formats.check_tensor_scale(fn, "tensor_scale", tensor_scale, x.device)


@_quantize_nvfp4.register_fake
def _(x, tensor_scale, backend):
    _check_quantize_nvfp4(x, tensor_scale)
    m, k = _rows_and_k(x)
    return tuple(x.new_empty(shape, dtype=dtype) for shape, dtype in _cast_outputs(NVFP4, m, k))


def _decoded_cast(fmt: Format, x: Tensor, option, backend: str | None):
    """The decoded cast of x [M, K] to ``fmt`` (``option``: the scaling, or NVFP4's tensor scale)
    on the cast backend ``select`` picks for ``quantize_{fmt}``, which must implement
    ``quantize_dequantize_{fmt}``."""
    fn = f"dq_kernels.quantize_dequantize_{fmt.name}"
    m, k = _rows_and_k(x)
    chosen = select(f"quantize_{fmt.name}", x.device, m, k, k, backend)
    if not chosen.can_quantize_dequantize(fmt.name):
        raise BackendUnavailableError(
            f"{fn}: dq_kernels backend {chosen.spec.name!r} does not implement quantize_dequantize_{fmt.name} (a "
            "cast decoded in one pass); name one that does (e.g. backend='cutlass' or 'triton_cast' on CUDA)"
        )
    with _on_device(x):
        result = getattr(chosen, f"quantize_dequantize_{fmt.name}")(x, option)
    if chosen in user_backends:
        values = (((m, k), _DECODED_DTYPE[fmt.name]),)
        expected = values + (((), torch.float32),) if fmt.has_tensor_scale else values
        _check_outputs(chosen, f"quantize_dequantize_{fmt.name}", result, expected, x.device)
    return result


@_op("quantize_dequantize_mxfp8(Tensor x, str scaling, str? backend) -> Tensor")
def _quantize_dequantize_mxfp8(x: Tensor, scaling: str, backend: str | None) -> Tensor:
    _check_quantize_mxfp8(x, scaling)
    return _decoded_cast(MXFP8, x, scaling, backend)


@_quantize_dequantize_mxfp8.register_fake
def _(x, scaling, backend):
    _check_quantize_mxfp8(x, scaling)
    return x.new_empty(_rows_and_k(x), dtype=_DECODED_DTYPE["mxfp8"])


@_op("quantize_dequantize_nvfp4(Tensor x, Tensor? tensor_scale, str? backend) -> (Tensor, Tensor)")
def _quantize_dequantize_nvfp4(x: Tensor, tensor_scale: Tensor | None, backend: str | None) -> tuple[Tensor, Tensor]:
    _check_quantize_nvfp4(x, tensor_scale)
    values, ts = _decoded_cast(NVFP4, x, tensor_scale, backend)
    if tensor_scale is not None and ts.untyped_storage().data_ptr() == tensor_scale.untyped_storage().data_ptr():
        ts = ts.clone()  # an op's outputs must not alias its inputs
    return values, ts


@_quantize_dequantize_nvfp4.register_fake
def _(x, tensor_scale, backend):
    _check_quantize_nvfp4(x, tensor_scale)
    return x.new_empty(_rows_and_k(x), dtype=_DECODED_DTYPE["nvfp4"]), x.new_empty((), dtype=torch.float32)


# ----------------------------------------------------------------------------------------------
# Dequantize (always the reference decode: native CUDA kernels when built, else pure torch)
# ----------------------------------------------------------------------------------------------


@_op("dequantize_mxfp8(Tensor q, Tensor s, ScalarType dtype) -> Tensor")
def _dequantize_mxfp8(q: Tensor, s: Tensor, dtype: torch.dtype) -> Tensor:
    _check_dequantize_mxfp8(q, s, dtype)
    return reference.dequantize_mxfp8(q, s, dtype)


def _check_dequantize_mxfp8(q, s, dtype):
    fn = "dq_kernels.dequantize_mxfp8"
    formats.check_quantized(fn, MXFP8, "q", q, "s", s)
    formats.check_output_dtype(fn, dtype)


@_dequantize_mxfp8.register_fake
def _(q, s, dtype):
    _check_dequantize_mxfp8(q, s, dtype)
    return q.new_empty(q.shape, dtype=dtype)


@_op("dequantize_nvfp4(Tensor q, Tensor s, Tensor tensor_scale, ScalarType dtype) -> Tensor")
def _dequantize_nvfp4(q: Tensor, s: Tensor, tensor_scale: Tensor, dtype: torch.dtype) -> Tensor:
    _check_dequantize_nvfp4(q, s, tensor_scale, dtype)
    return reference.dequantize_nvfp4(q, s, tensor_scale, dtype)


def _check_dequantize_nvfp4(q, s, tensor_scale, dtype):
    fn = "dq_kernels.dequantize_nvfp4"
    formats.check_quantized(fn, NVFP4, "q", q, "s", s)
    formats.check_tensor_scale(fn, "tensor_scale", tensor_scale, q.device)
    formats.check_output_dtype(fn, dtype)


@_dequantize_nvfp4.register_fake
def _(q, s, tensor_scale, dtype):
    _check_dequantize_nvfp4(q, s, tensor_scale, dtype)
    return q.new_empty((q.shape[0], q.shape[1] * 2), dtype=dtype)


# ----------------------------------------------------------------------------------------------
# GEMM
# ----------------------------------------------------------------------------------------------


@_op(
    "mxfp8_mm(Tensor a_q, Tensor a_s, Tensor b_q, Tensor b_s, Tensor? bias, ScalarType out_dtype, str? backend) -> Tensor"
)
def _mxfp8_mm(a_q, a_s, b_q, b_s, bias, out_dtype, backend):
    m, n, k = _check_mm("dq_kernels.mxfp8_mm", MXFP8, a_q, a_s, b_q, b_s, bias, out_dtype)
    chosen = select("mxfp8_mm", a_q.device, m, n, k, backend)
    with _on_device(a_q):
        out = chosen.mxfp8_mm(a_q, a_s, b_q, b_s, bias, out_dtype)
    if chosen in user_backends:
        _check_outputs(chosen, "mxfp8_mm", out, (((m, n), out_dtype),), a_q.device)
    return out


@_mxfp8_mm.register_fake
def _(a_q, a_s, b_q, b_s, bias, out_dtype, backend):
    m, n, _ = _check_mm("dq_kernels.mxfp8_mm", MXFP8, a_q, a_s, b_q, b_s, bias, out_dtype)
    return a_q.new_empty((m, n), dtype=out_dtype)


def _check_nvfp4_mm(a_q, a_s, a_ts, b_q, b_s, b_ts, bias, out_dtype):
    fn = "dq_kernels.nvfp4_mm"
    m, n, k = _check_mm(fn, NVFP4, a_q, a_s, b_q, b_s, bias, out_dtype)
    formats.check_tensor_scale(fn, "a_ts", a_ts, a_q.device)
    formats.check_tensor_scale(fn, "b_ts", b_ts, a_q.device)
    return m, n, k


@_op(
    "nvfp4_mm(Tensor a_q, Tensor a_s, Tensor a_ts, Tensor b_q, Tensor b_s, Tensor b_ts, Tensor? bias, "
    "ScalarType out_dtype, str? backend) -> Tensor"
)
def _nvfp4_mm(a_q, a_s, a_ts, b_q, b_s, b_ts, bias, out_dtype, backend):
    m, n, k = _check_nvfp4_mm(a_q, a_s, a_ts, b_q, b_s, b_ts, bias, out_dtype)
    chosen = select("nvfp4_mm", a_q.device, m, n, k, backend)
    with _on_device(a_q):
        out = chosen.nvfp4_mm(a_q, a_s, a_ts, b_q, b_s, b_ts, bias, out_dtype)
    if chosen in user_backends:
        _check_outputs(chosen, "nvfp4_mm", out, (((m, n), out_dtype),), a_q.device)
    return out


@_nvfp4_mm.register_fake
def _(a_q, a_s, a_ts, b_q, b_s, b_ts, bias, out_dtype, backend):
    m, n, _ = _check_nvfp4_mm(a_q, a_s, a_ts, b_q, b_s, b_ts, bias, out_dtype)
    return a_q.new_empty((m, n), dtype=out_dtype)


def _check_nvfp4_weight_only_mm(a, b_q, b_s, b_ts, bias):
    fn = "dq_kernels.nvfp4_weight_only_mm"
    if not isinstance(a, Tensor) or a.dim() != 2:
        raise ValueError(f"{fn}: a must be a 2-D [M, K] tensor, got {type(a).__name__} of shape {tuple(getattr(a, 'shape', ()))}")
    m, k = formats.check_high_precision(fn, "a", a, NVFP4.block_size)
    n = _check_weight_and_bias(fn, NVFP4, "a", a, k, b_q, b_s, bias)
    formats.check_tensor_scale(fn, "b_ts", b_ts, a.device)
    return m, n, k


@_op("nvfp4_weight_only_mm(Tensor a, Tensor b_q, Tensor b_s, Tensor b_ts, Tensor? bias, str? backend) -> Tensor")
def _nvfp4_weight_only_mm(a, b_q, b_s, b_ts, bias, backend):
    m, n, k = _check_nvfp4_weight_only_mm(a, b_q, b_s, b_ts, bias)
    mm = select("nvfp4_weight_only_mm", a.device, m, n, k, backend)
    with _on_device(a):
        return _run_nvfp4_weight_only_mm(mm, a, b_q, b_s, b_ts, bias)


def _run_nvfp4_weight_only_mm(mm: Backend, a, b_q, b_s, b_ts, bias):
    out = mm.nvfp4_weight_only_mm(a, b_q, b_s, b_ts, bias)
    if mm in user_backends:
        _check_outputs(mm, "nvfp4_weight_only_mm", out, (((a.shape[0], b_q.shape[0]), a.dtype),), a.device)
    return out


@_nvfp4_weight_only_mm.register_fake
def _(a, b_q, b_s, b_ts, bias, backend):
    m, n, _ = _check_nvfp4_weight_only_mm(a, b_q, b_s, b_ts, bias)
    return a.new_empty((m, n))


# ----------------------------------------------------------------------------------------------
# Quantized Linear: cast + GEMM in one op
# ----------------------------------------------------------------------------------------------


def _check_linear(fn, fmt, x, b_q, b_s, bias) -> tuple[int, int, int]:
    """Check a linear op's activation x [M, K] and weight; return (M, N, K)."""
    if not isinstance(x, Tensor) or x.dim() != 2:
        raise ValueError(f"{fn}: x must be a 2-D [M, K] tensor, got {type(x).__name__} of shape {tuple(getattr(x, 'shape', ()))}")
    m, k = formats.check_high_precision(fn, "x", x, fmt.block_size)
    n = _check_weight_and_bias(fn, fmt, "x", x, k, b_q, b_s, bias)
    return m, n, k


def _check_mxfp8_linear(x, b_q, b_s, bias, scaling):
    fn = "dq_kernels.mxfp8_linear"
    m, n, k = _check_linear(fn, MXFP8, x, b_q, b_s, bias)
    _check_scaling(fn, scaling)
    return m, n, k


def _run_mxfp8_linear(plan: LinearPlan, x, b_q, b_s, bias, scaling):
    if plan.fused:
        out = plan.mm.mxfp8_linear(x, b_q, b_s, bias, scaling)
    elif plan.decoded:
        out = plan.mm.mxfp8_mm_decoded(plan.cast.quantize_dequantize_mxfp8(x, scaling), b_q, b_s, bias, x.dtype)
    else:
        quantized = plan.cast.quantize_mxfp8(x, scaling)
        if plan.checked:
            _check_outputs(plan.cast, "quantize_mxfp8", quantized, _cast_outputs(MXFP8, *x.shape), x.device)
        x_q, x_s = quantized
        out = plan.mm.mxfp8_mm(x_q, x_s, b_q, b_s, bias, x.dtype)
    if plan.checked:
        _check_outputs(plan.mm, "mxfp8_mm", out, (((x.shape[0], b_q.shape[0]), x.dtype),), x.device)
    return out


@_op(
    "mxfp8_linear(Tensor x, Tensor b_q, Tensor b_s, Tensor? bias, str scaling, str? cast_backend, "
    "str? mm_backend) -> Tensor"
)
def _mxfp8_linear(x, b_q, b_s, bias, scaling, cast_backend, mm_backend):
    m, n, k = _check_mxfp8_linear(x, b_q, b_s, bias, scaling)
    plan = plan_linear("mxfp8", x.device, m, n, k, x.dtype, cast_backend, mm_backend)
    with _on_device(x):
        return _run_mxfp8_linear(plan, x, b_q, b_s, bias, scaling)


@_mxfp8_linear.register_fake
def _(x, b_q, b_s, bias, scaling, cast_backend, mm_backend):
    m, n, _ = _check_mxfp8_linear(x, b_q, b_s, bias, scaling)
    return x.new_empty((m, n))


def _check_nvfp4_linear(x, b_q, b_s, b_ts, activation_scale, bias):
    fn = "dq_kernels.nvfp4_linear"
    m, n, k = _check_linear(fn, NVFP4, x, b_q, b_s, bias)
    formats.check_tensor_scale(fn, "b_ts", b_ts, x.device)
    if activation_scale is not None:
        formats.check_tensor_scale(fn, "activation_scale", activation_scale, x.device)
    return m, n, k


def _run_nvfp4_linear(plan: LinearPlan, x, b_q, b_s, b_ts, activation_scale, bias):
    if plan.fused:
        out = plan.mm.nvfp4_linear(x, b_q, b_s, b_ts, activation_scale, bias)
    elif plan.decoded:
        values, x_ts = plan.cast.quantize_dequantize_nvfp4(x, activation_scale)
        out = plan.mm.nvfp4_mm_decoded(values, x_ts, b_q, b_s, b_ts, bias, x.dtype)
    else:
        quantized = plan.cast.quantize_nvfp4(x, activation_scale)
        if plan.checked:
            _check_outputs(plan.cast, "quantize_nvfp4", quantized, _cast_outputs(NVFP4, *x.shape), x.device)
        x_q, x_s, x_ts = quantized
        out = plan.mm.nvfp4_mm(x_q, x_s, x_ts, b_q, b_s, b_ts, bias, x.dtype)
    if plan.checked:
        _check_outputs(plan.mm, "nvfp4_mm", out, (((x.shape[0], b_q.shape[0]), x.dtype),), x.device)
    return out


@_op(
    "nvfp4_linear(Tensor x, Tensor b_q, Tensor b_s, Tensor b_ts, Tensor? activation_scale, Tensor? bias, "
    "str? cast_backend, str? mm_backend) -> Tensor"
)
def _nvfp4_linear(x, b_q, b_s, b_ts, activation_scale, bias, cast_backend, mm_backend):
    m, n, k = _check_nvfp4_linear(x, b_q, b_s, b_ts, activation_scale, bias)
    plan = plan_linear("nvfp4", x.device, m, n, k, x.dtype, cast_backend, mm_backend)
    with _on_device(x):
        return _run_nvfp4_linear(plan, x, b_q, b_s, b_ts, activation_scale, bias)


@_nvfp4_linear.register_fake
def _(x, b_q, b_s, b_ts, activation_scale, bias, cast_backend, mm_backend):
    m, n, _ = _check_nvfp4_linear(x, b_q, b_s, b_ts, activation_scale, bias)
    return x.new_empty((m, n))


# ----------------------------------------------------------------------------------------------
# Eager entry points of the quantized Linear: the op bodies without the custom-op dispatcher and
# without re-checking the weight (checked once, when the weight class is built). For callers
# that are not being traced (``tracing``); everything else goes through the ops above.
# ----------------------------------------------------------------------------------------------


def tracing(x: Tensor) -> bool:
    """Whether x is being traced (torch.compile, fake tensors, a dispatch mode such as make_fx or
    functionalization): then the custom ops must be called, so that the trace sees them."""
    return type(x) is not Tensor or torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack() > 0


_SAME_DEVICE = contextlib.nullcontext()  # reusable: nothing to do on entry or exit


def _on_device(x: Tensor):
    """x's CUDA device made current while its kernels launch (Triton and the native library launch
    on the current device), or nothing when it already is or x is on the CPU. A CUDA x means CUDA
    is initialized: torch's raw current-device query does, without ``torch.cuda.current_device``'s
    Python lazy-init check."""
    if x.is_cuda and x.device.index != torch._C._cuda_getDevice():
        return torch.cuda.device(x.device)
    return _SAME_DEVICE


def check_activation(fn: str, x: Tensor, k: int, device: torch.device) -> int:
    """The per-call check of a quantized Linear's activation x [M, K]: a bf16/fp16/fp32 2-D tensor
    with K columns, M >= 1, on the weight's device. Returns M."""
    if x.dtype not in formats.HIGH_PRECISION_DTYPES:
        raise TypeError(f"{fn}: x must be bfloat16, float16 or float32, got {x.dtype}")
    if x.dim() != 2 or x.shape[1] != k or x.shape[0] == 0:
        raise ValueError(f"{fn}: x must be [M >= 1, K = {k}], got shape {tuple(x.shape)}")
    if x.device != device:
        raise ValueError(f"{fn}: x is on {x.device} but the weight is on {device}")
    return x.shape[0]


def mxfp8_linear_eager(x, b_q, b_s, bias, scaling: str, backend: str) -> Tensor:
    """``mxfp8_linear`` for x [M, K] and a checked weight whose backend is ``backend`` (a preference)."""
    n, k = b_q.shape
    m = check_activation("dq_kernels.mxfp8_linear", x, k, b_q.device)
    plan = plan_linear("mxfp8", x.device, m, n, k, x.dtype, None, None, backend)
    with _on_device(x):
        return _run_mxfp8_linear(plan, x, b_q, b_s, bias, scaling)


def nvfp4_linear_eager(x, b_q, b_s, b_ts, activation_scale, bias, backend: str) -> Tensor:
    """``nvfp4_linear`` for x [M, K] and a checked weight whose backend is ``backend`` (a preference)."""
    n, k = b_q.shape[0], b_q.shape[1] * 2
    m = check_activation("dq_kernels.nvfp4_linear", x, k, b_q.device)
    plan = plan_linear("nvfp4", x.device, m, n, k, x.dtype, None, None, backend)
    with _on_device(x):
        return _run_nvfp4_linear(plan, x, b_q, b_s, b_ts, activation_scale, bias)


def nvfp4_weight_only_eager(x, b_q, b_s, b_ts, bias, backend: str) -> Tensor:
    """``nvfp4_weight_only_mm`` for x [M, K] and a checked weight whose backend is ``backend``."""
    n, k = b_q.shape[0], b_q.shape[1] * 2
    m = check_activation("dq_kernels.nvfp4_weight_only_mm", x, k, b_q.device)
    mm = select("nvfp4_weight_only_mm", x.device, m, n, k, None, backend)
    with _on_device(x):
        return _run_nvfp4_weight_only_mm(mm, x, b_q, b_s, b_ts, bias)


def linear_launcher(
    fmt: str, x: Tensor, b_q, b_s, bias, backend: str, *, scaling: str = "rceil", b_ts=None, activation_scale=None
) -> Callable[[Tensor], Tensor] | None:
    """For the eager calls of a quantized Linear of ``fmt`` ("mxfp8", or "nvfp4" with activation
    quantization) with a checked weight whose backend is ``backend`` (a preference), and
    activations like x [M, K] (its M, dtype and device; x is checked here): the launcher of the
    backend that runs the whole Linear in one call (``Backend.linear_launcher``), or None where the
    Linear runs as steps or on a registered backend (``*_linear_eager`` then). It stays right while
    ``backends.selection_scope()`` is unchanged and the caller keeps b_q and b_s alive (it need not
    hold them)."""
    k = b_q.shape[1] * (1 if fmt == "mxfp8" else 2)
    m = check_activation(f"dq_kernels.{fmt}_linear", x, k, b_q.device)
    plan = plan_linear(fmt, x.device, m, b_q.shape[0], k, x.dtype, None, None, backend)
    if not plan.fused or plan.checked:
        return None
    return plan.mm.linear_launcher(fmt, x.device, m, x.dtype, b_q, b_s, bias, scaling=scaling, b_ts=b_ts,
                                   activation_scale=activation_scale)


# ----------------------------------------------------------------------------------------------
# Public Python wrappers
# ----------------------------------------------------------------------------------------------


def quantize_mxfp8(x: Tensor, scaling: str = "rceil", backend: str | None = None) -> tuple[Tensor, Tensor]:
    """Quantize x [..., K] (bf16/fp16/fp32, K % 32 == 0) to canonical MXFP8 ``(q, s)``: q
    float8_e4m3fn [M, K], s uint8 E8M0 [round_up(M, 128), round_up(K / 32, 4)] swizzled.
    Bit-identical to ``dq_kernels.formats.quantize_mxfp8`` on every backend."""
    return torch.ops.dq_kernels.quantize_mxfp8(x, scaling, backend)


def quantize_nvfp4(
    x: Tensor, tensor_scale: Tensor | None = None, backend: str | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Quantize x [..., K] (K % 16 == 0) to canonical NVFP4 ``(q, s, tensor_scale)``: q uint8
    [M, K / 2], s float8_e4m3fn [round_up(M, 128), round_up(K / 16, 4)] swizzled, tensor_scale a
    0-dim float32 (amax(|x|) / 2688 when not given)."""
    return torch.ops.dq_kernels.quantize_nvfp4(x, tensor_scale, backend)


def quantize_dequantize_mxfp8(x: Tensor, scaling: str = "rceil", backend: str | None = None) -> Tensor:
    """x [..., K] (bf16/fp16/fp32, K % 32 == 0) rounded to MXFP8 and decoded, in one pass: bfloat16
    [M, K], bit for bit ``dequantize_mxfp8(*quantize_mxfp8(x, scaling), torch.bfloat16)``
    (``formats.quantize_dequantize_mxfp8``): the activation the GEMMs that take it decoded read
    (``mxfp8_mm_decoded``). ``backend``: a cast backend that implements it (cutlass, triton_cast);
    None selects one."""
    return torch.ops.dq_kernels.quantize_dequantize_mxfp8(x, scaling, backend)


def quantize_dequantize_nvfp4(
    x: Tensor, tensor_scale: Tensor | None = None, backend: str | None = None
) -> tuple[Tensor, Tensor]:
    """x [..., K] (bf16/fp16/fp32, K % 16 == 0) rounded to NVFP4 and decoded without its tensor
    scale: (float16 [M, K] holding e2m1 x block scale, exactly; the 0-dim float32 tensor scale,
    ``tensor_scale`` or amax / 2688), bit for bit ``formats.quantize_dequantize_nvfp4``: the
    activation ``nvfp4_mm_decoded`` reads. ``backend``: as for ``quantize_dequantize_mxfp8``."""
    return torch.ops.dq_kernels.quantize_dequantize_nvfp4(x, tensor_scale, backend)


def dequantize_mxfp8(q: Tensor, s: Tensor, dtype: torch.dtype = torch.bfloat16) -> Tensor:
    """Canonical MXFP8 -> [M, K] of ``dtype`` (exact in float32, rounded once)."""
    formats.check_output_dtype("dq_kernels.dequantize_mxfp8", dtype, "dtype")
    return torch.ops.dq_kernels.dequantize_mxfp8(q, s, dtype)


def dequantize_nvfp4(q: Tensor, s: Tensor, tensor_scale: Tensor, dtype: torch.dtype = torch.bfloat16) -> Tensor:
    """Canonical NVFP4 -> [M, K] of ``dtype``: (e2m1 * block scale) * tensor_scale."""
    formats.check_output_dtype("dq_kernels.dequantize_nvfp4", dtype, "dtype")
    return torch.ops.dq_kernels.dequantize_nvfp4(q, s, tensor_scale, dtype)


def mxfp8_mm(
    a_q: Tensor,
    a_s: Tensor,
    b_q: Tensor,
    b_s: Tensor,
    bias: Tensor | None = None,
    out_dtype: torch.dtype = torch.bfloat16,
    backend: str | None = None,
) -> Tensor:
    """a @ b.T for canonical MXFP8 a [M, K] and b [N, K]; returns [M, N] of ``out_dtype``.

    ``backend``: a name from ``dq_kernels.available_backends()`` or "auto"; None defers to
    ``use_backend`` / ``DQ_KERNELS_BACKEND`` / auto."""
    formats.check_output_dtype("dq_kernels.mxfp8_mm", out_dtype, "out_dtype")
    return torch.ops.dq_kernels.mxfp8_mm(a_q, a_s, b_q, b_s, bias, out_dtype, backend)


def nvfp4_mm(
    a_q: Tensor,
    a_s: Tensor,
    a_ts: Tensor,
    b_q: Tensor,
    b_s: Tensor,
    b_ts: Tensor,
    bias: Tensor | None = None,
    out_dtype: torch.dtype = torch.bfloat16,
    backend: str | None = None,
) -> Tensor:
    """a @ b.T for canonical NVFP4 a [M, K] and b [N, K] with their tensor scales; returns [M, N]."""
    formats.check_output_dtype("dq_kernels.nvfp4_mm", out_dtype, "out_dtype")
    return torch.ops.dq_kernels.nvfp4_mm(a_q, a_s, a_ts, b_q, b_s, b_ts, bias, out_dtype, backend)


def nvfp4_weight_only_mm(
    a: Tensor,
    b_q: Tensor,
    b_s: Tensor,
    b_ts: Tensor,
    bias: Tensor | None = None,
    backend: str | None = None,
) -> Tensor:
    """W4A16: a [M, K] (bf16/fp16/fp32, not quantized) @ b.T for a canonical NVFP4 weight b [N, K];
    returns [M, N] of a's dtype. The activation keeps its precision, so the result differs from
    ``nvfp4_mm`` on a quantized activation: callers opt in (``NVFP4Config(weight_only=True)``)."""
    return torch.ops.dq_kernels.nvfp4_weight_only_mm(a, b_q, b_s, b_ts, bias, backend)


def mxfp8_linear(
    x: Tensor,
    b_q: Tensor,
    b_s: Tensor,
    bias: Tensor | None = None,
    scaling: str = "rceil",
    cast_backend: str | None = None,
    mm_backend: str | None = None,
) -> Tensor:
    """A quantized Linear in one op: ``mxfp8_mm(*quantize_mxfp8(x, scaling), b_q, b_s, bias,
    out_dtype=x.dtype)`` for x [M, K] (bf16/fp16/fp32) and a canonical MXFP8 weight b [N, K];
    returns [M, N] of x's dtype. ``cast_backend`` / ``mm_backend`` choose the backends of the two
    steps as ``backend`` does for those ops."""
    return torch.ops.dq_kernels.mxfp8_linear(x, b_q, b_s, bias, scaling, cast_backend, mm_backend)


def nvfp4_linear(
    x: Tensor,
    b_q: Tensor,
    b_s: Tensor,
    b_ts: Tensor,
    activation_scale: Tensor | None = None,
    bias: Tensor | None = None,
    cast_backend: str | None = None,
    mm_backend: str | None = None,
) -> Tensor:
    """A quantized Linear in one op: ``nvfp4_mm(*quantize_nvfp4(x, activation_scale), b_q, b_s,
    b_ts, bias, out_dtype=x.dtype)`` for x [M, K] and a canonical NVFP4 weight with its tensor
    scale; returns [M, N] of x's dtype. ``activation_scale``: None for a dynamic tensor scale."""
    return torch.ops.dq_kernels.nvfp4_linear(x, b_q, b_s, b_ts, activation_scale, bias, cast_backend, mm_backend)


# ----------------------------------------------------------------------------------------------
# GEMM on a decoded activation: a quantized Linear under torch.compile with
# DQ_KERNELS_COMPILE_CAST=shared or fused as the decoded cast (the cast op once per activation, or
# torch ops that inductor fuses into the op before it) and one of these ops (docs/compile.md)
# ----------------------------------------------------------------------------------------------

ENV_COMPILE_CAST = "DQ_KERNELS_COMPILE_CAST"
COMPILE_CAST_MODES = ("op", "shared", "fused")


def compile_cast() -> str:
    """How torch.compile traces a quantized Linear whose GEMM takes its activation decoded, from
    ``DQ_KERNELS_COMPILE_CAST``: "shared" (default; unset or empty) as the decoded cast op, made once
    per activation and shared by the Linears that read it, then the decoded mm op (FLUX with CUDA
    graphs on the H100: 0.95x / 0.89x of bf16 for MXFP8 / NVFP4 against 0.94x / 0.87x with "op");
    "op" as the linear op (cast and GEMM in one op: one native call on Hopper); "fused" (opt-in) the
    shared form with the cast as torch ops that inductor fuses into the op before it (on the H100
    faster behind a LayerNorm, slower behind a GELU, 5-17 % slower per FLUX step: docs/compile.md).
    The one place that reads the variable; another value raises ValueError naming it."""
    value = os.environ.get(ENV_COMPILE_CAST) or "shared"
    if value not in COMPILE_CAST_MODES:
        raise ValueError(
            f"the environment variable {ENV_COMPILE_CAST}={value!r} must be one of {COMPILE_CAST_MODES} "
            "(or unset: shared)"
        )
    return value


_DECODED_MM = {"mxfp8_mm": "mxfp8_mm_decoded", "nvfp4_mm": "nvfp4_mm_decoded"}  # mm op -> its method on a decoded activation


def _implements_decoded(backend: Backend, op: str) -> bool:
    """Whether ``backend`` overrides the method that runs mm op ``op`` on a decoded activation."""
    method = _DECODED_MM[op]
    return getattr(type(backend), method) is not getattr(Backend, method)


def decoded_linear(fmt: str, x: Tensor, n: int, k: int, cast_backend: str | None, mm_backend: str | None) -> str | None:
    """For a quantized Linear of ``fmt`` ("mxfp8" or "nvfp4") being traced, x [M, K] and a weight
    [n, k]: the name of the mm backend that takes the activation decoded at this (device, M), where
    the Linear is to be traced as the decoded cast (``traced_cast``) then the decoded mm op on that
    backend; None keeps the linear op: a symbolic M (dynamic shapes), an mm backend (as the linear
    op would select it from ``mm_backend``) that does not take it decoded here
    (``Backend.takes_decoded_activation``) or lacks the method, the "op" mode of ``compile_cast``,
    or for its "shared" mode a cast backend (from ``cast_backend``) that cannot make it
    (``Backend.can_quantize_dequantize``). The graph keeps the backends chosen here."""
    m, mode = x.shape[0], compile_cast()
    if mode == "op" or not isinstance(m, int):
        return None
    try:
        plan = plan_linear(fmt, x.device, m, n, k, x.dtype, cast_backend, mm_backend)
    except BackendUnavailableError:  # the linear op raises it when it runs
        return None
    op = f"{fmt}_mm"
    if not (plan.mm.takes_decoded_activation(op, x.device, m) and _implements_decoded(plan.mm, op)):
        return None
    if mode == "shared" and not plan.cast.can_quantize_dequantize(fmt):
        return None
    return plan.mm.spec.name


class _TracedCasts:
    """The decoded activations made while torch.compile traces a graph, so that the quantized
    Linears that read one activation share its cast (FLUX's q, k, v and MLP input projections read
    one norm's output: three casts of it saved per block). Tracing passes are told apart by their
    dispatch modes (each pass of torch.compile runs under modes of its own); an entry counts only
    for the same activation, unchanged since (its version counter, which its views share: an
    in-place op bumps it, in a trace too), cast the same way. The activation is a tensor and its
    view as [M, K] (each Linear folds [..., K] into a view of its own): the same base tensor, shape,
    strides and offset. Held only until a trace under other modes casts. Only fake tensors (what
    torch.compile traces) share a cast: real tensors (eager calls under a dispatch mode) hold memory
    that can change unseen. (Fake, not ``torch.compiler.is_compiling()``: under torch 2.11 that is
    False while AOT autograd traces, seen on the H100.)"""

    def __init__(self):
        self.modes: list[weakref.ref] = []
        self.entries: dict[tuple, tuple] = {}  # where -> (weakref to the base tensor, version, option, result)

    def _same_trace(self) -> None:
        modes = _get_current_dispatch_mode_stack()
        if len(modes) != len(self.modes) or any(ref() is not mode for ref, mode in zip(self.modes, modes)):
            self.modes = [weakref.ref(mode) for mode in modes]
            self.entries = {}

    def get(self, x: Tensor, key: tuple, option, make: Callable[[], tuple]) -> tuple:
        """``make()``'s result for x, ``key`` (hashable, compared by value) and ``option`` (a tensor
        or None, compared by identity), made at most once per trace."""
        if not is_fake(x) or x.is_inference():
            return make()
        self._same_trace()
        base = x if x._base is None else x._base
        where = (id(base), tuple(x.shape), x.stride(), x.storage_offset(), x.dtype, key)
        entry = self.entries.get(where)
        if entry is not None and entry[0]() is base and entry[1] == x._version and entry[2] is option:
            return entry[3]
        result = make()
        self.entries[where] = (weakref.ref(base), x._version, option, result)
        return result


_TRACED_CASTS = _TracedCasts()


def traced_cast(fmt: str, x: Tensor, option, cast_backend: str | None) -> tuple[Tensor, ...]:
    """For a traced quantized Linear that ``decoded_linear`` hands to a decoded mm op: x [M, K]
    rounded to ``fmt`` and decoded, as (values,) for MXFP8 (``option``: the scaling) and (values,
    tensor scale) for NVFP4 (``option``: the static activation scale or None). With
    ``compile_cast()`` "shared" the decoded cast op on ``cast_backend``, with "fused" torch ops; made
    once per traced activation, so the Linears that read x share it (``_TracedCasts``)."""
    mode = compile_cast()

    def make():
        if fmt == "mxfp8":
            if mode == "fused":
                return (formats.quantize_dequantize_mxfp8(x, option),)
            return (torch.ops.dq_kernels.quantize_dequantize_mxfp8(x, option, cast_backend),)
        if mode == "fused":
            return formats.quantize_dequantize_nvfp4(x, option)
        return tuple(torch.ops.dq_kernels.quantize_dequantize_nvfp4(x, option, cast_backend))

    if fmt == "mxfp8":  # a scaling name: equal names cast alike
        return _TRACED_CASTS.get(x, (fmt, mode, cast_backend, option), None, make)
    return _TRACED_CASTS.get(x, (fmt, mode, cast_backend), option, make)  # a tensor scale: the same tensor


_DECODED_DTYPE = {"mxfp8": torch.bfloat16, "nvfp4": torch.float16}  # the dtype of a decoded activation


def _check_decoded_activation(fn: str, fmt: Format, values: Tensor) -> tuple[int, int]:
    """A decoded activation: [M >= 1, K] of ``_DECODED_DTYPE[fmt.name]``, K a positive multiple of
    the block size, contiguous. Returns (M, K)."""
    dtype = _DECODED_DTYPE[fmt.name]
    if not isinstance(values, Tensor):
        raise TypeError(f"{fn}: values must be a torch.Tensor, got {type(values).__name__}")
    if values.dtype != dtype:
        raise TypeError(f"{fn}: values must be {str(dtype).removeprefix('torch.')} (the decoded activation), got {values.dtype}")
    if values.dim() != 2 or values.shape[0] == 0 or values.shape[1] == 0 or values.shape[1] % fmt.block_size:
        raise ValueError(
            f"{fn}: values must be [M >= 1, K] with K a positive multiple of {fmt.block_size}, "
            f"got shape {tuple(values.shape)}"
        )
    if not values.is_contiguous():
        raise ValueError(f"{fn}: values must be contiguous (row-major), got strides {values.stride()}")
    return values.shape[0], values.shape[1]


def _check_mxfp8_mm_decoded(values, b_q, b_s, bias, out_dtype) -> tuple[int, int, int]:
    fn = "dq_kernels.mxfp8_mm_decoded"
    m, k = _check_decoded_activation(fn, MXFP8, values)
    n = _check_weight_and_bias(fn, MXFP8, "values", values, k, b_q, b_s, bias)
    formats.check_output_dtype(fn, out_dtype)
    return m, n, k


def _backend_for_decoded_mm(op: str, device: torch.device, m: int, n: int, k: int, backend: str | None) -> Backend:
    """The backend that runs decoded mm op ``op``: ``select``'s choice for ``op``, which must
    implement the method."""
    chosen = select(op, device, m, n, k, backend)
    if not _implements_decoded(chosen, op):
        raise BackendUnavailableError(
            f"dq_kernels backend {chosen.spec.name!r} does not implement {_DECODED_MM[op]} (a GEMM on a decoded "
            f"activation); name a backend that does (e.g. backend='reference'), or set {ENV_COMPILE_CAST}=op"
        )
    return chosen


@_op("mxfp8_mm_decoded(Tensor values, Tensor b_q, Tensor b_s, Tensor? bias, ScalarType out_dtype, str? backend) -> Tensor")
def _mxfp8_mm_decoded(values, b_q, b_s, bias, out_dtype, backend):
    m, n, k = _check_mxfp8_mm_decoded(values, b_q, b_s, bias, out_dtype)
    chosen = _backend_for_decoded_mm("mxfp8_mm", values.device, m, n, k, backend)
    with _on_device(values):
        out = chosen.mxfp8_mm_decoded(values, b_q, b_s, bias, out_dtype)
    if chosen in user_backends:
        _check_outputs(chosen, "mxfp8_mm_decoded", out, (((m, n), out_dtype),), values.device)
    return out


@_mxfp8_mm_decoded.register_fake
def _(values, b_q, b_s, bias, out_dtype, backend):
    m, n, _ = _check_mxfp8_mm_decoded(values, b_q, b_s, bias, out_dtype)
    return values.new_empty((m, n), dtype=out_dtype)


def _check_nvfp4_mm_decoded(values, x_ts, b_q, b_s, b_ts, bias, out_dtype) -> tuple[int, int, int]:
    fn = "dq_kernels.nvfp4_mm_decoded"
    m, k = _check_decoded_activation(fn, NVFP4, values)
    formats.check_tensor_scale(fn, "x_ts", x_ts, values.device)
    n = _check_weight_and_bias(fn, NVFP4, "values", values, k, b_q, b_s, bias)
    formats.check_tensor_scale(fn, "b_ts", b_ts, values.device)
    formats.check_output_dtype(fn, out_dtype)
    return m, n, k


@_op(
    "nvfp4_mm_decoded(Tensor values, Tensor x_ts, Tensor b_q, Tensor b_s, Tensor b_ts, Tensor? bias, "
    "ScalarType out_dtype, str? backend) -> Tensor"
)
def _nvfp4_mm_decoded(values, x_ts, b_q, b_s, b_ts, bias, out_dtype, backend):
    m, n, k = _check_nvfp4_mm_decoded(values, x_ts, b_q, b_s, b_ts, bias, out_dtype)
    chosen = _backend_for_decoded_mm("nvfp4_mm", values.device, m, n, k, backend)
    with _on_device(values):
        out = chosen.nvfp4_mm_decoded(values, x_ts, b_q, b_s, b_ts, bias, out_dtype)
    if chosen in user_backends:
        _check_outputs(chosen, "nvfp4_mm_decoded", out, (((m, n), out_dtype),), values.device)
    return out


@_nvfp4_mm_decoded.register_fake
def _(values, x_ts, b_q, b_s, b_ts, bias, out_dtype, backend):
    m, n, _ = _check_nvfp4_mm_decoded(values, x_ts, b_q, b_s, b_ts, bias, out_dtype)
    return values.new_empty((m, n), dtype=out_dtype)


def mxfp8_mm_decoded(
    values: Tensor,
    b_q: Tensor,
    b_s: Tensor,
    bias: Tensor | None = None,
    out_dtype: torch.dtype = torch.bfloat16,
    backend: str | None = None,
) -> Tensor:
    """``mxfp8_mm`` from an activation decoded to bfloat16 (``formats.quantize_dequantize_mxfp8``:
    values bfloat16 [M, K]) and a canonical MXFP8 weight b [N, K]; returns [M, N] of ``out_dtype``,
    the same as ``mxfp8_mm`` on the quantized activation (the bf16 decode is exact unless a scale
    byte below 3 meets nonzero data). ``backend``: as for ``mxfp8_mm``; it must implement
    ``Backend.mxfp8_mm_decoded``."""
    formats.check_output_dtype("dq_kernels.mxfp8_mm_decoded", out_dtype, "out_dtype")
    return torch.ops.dq_kernels.mxfp8_mm_decoded(values, b_q, b_s, bias, out_dtype, backend)


def nvfp4_mm_decoded(
    values: Tensor,
    x_ts: Tensor,
    b_q: Tensor,
    b_s: Tensor,
    b_ts: Tensor,
    bias: Tensor | None = None,
    out_dtype: torch.dtype = torch.bfloat16,
    backend: str | None = None,
) -> Tensor:
    """``nvfp4_mm`` from an activation decoded without its tensor scale
    (``formats.quantize_dequantize_nvfp4``: values float16 [M, K] of e2m1 x block scale, x_ts its
    0-dim float32 tensor scale) and a canonical NVFP4 weight with its tensor scale; returns [M, N]
    of ``out_dtype``, the same as ``nvfp4_mm`` on the quantized activation. ``backend``: as for
    ``nvfp4_mm``; it must implement ``Backend.nvfp4_mm_decoded``."""
    formats.check_output_dtype("dq_kernels.nvfp4_mm_decoded", out_dtype, "out_dtype")
    return torch.ops.dq_kernels.nvfp4_mm_decoded(values, x_ts, b_q, b_s, b_ts, bias, out_dtype, backend)
