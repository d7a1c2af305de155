"""Linear weights stored in MXFP8 or NVFP4, as TorchAO tensor subclasses.

A quantized weight presents itself as the [N, K] (out_features x in_features) tensor of its
original dtype that it replaces, and holds the canonical operands of ``dq_kernels.formats``:

* ``MXFP8Weight``: ``qdata`` float8_e4m3fn [N, K]; ``scale`` uint8 E8M0 [round_up(N, 128),
  round_up(K / 32, 4)], 128x4 swizzled.
* ``NVFP4Weight``: ``qdata`` uint8 [N, K / 2]; ``scale`` float8_e4m3fn [round_up(N, 128),
  round_up(K / 16, 4)], swizzled; ``tensor_scale`` 0-dim float32; optionally ``activation_scale``,
  a static 0-dim float32 tensor scale for the activations (None: computed per call).

``F.linear(x, weight, bias)`` with x [..., K] (M rows in all) returns [..., N] of x's dtype. Traced
(torch.compile) and autograd-recorded calls run the linear op on x as [M, K]
(``dq_kernels.ops.mxfp8_linear`` / ``nvfp4_linear``: the cast op's quantization, then the mm op),
or, traced with DQ_KERNELS_COMPILE_CAST=shared (the default) or fused where the GEMM takes its
activation decoded, the decoded cast (once per traced activation, shared by the Linears that read it) then
the decoded mm op (``_linear_op``);
for each of the two steps they pass the weight's ``backend`` when that backend implements the
step's op, and None otherwise ("auto", or the cast of an activation for a GEMM-only backend), so
``use_backend`` and ``DQ_KERNELS_BACKEND`` still apply there. Eager calls run the op's body
directly: a launcher kept per weight, M, dtype, bias and backend names in effect where the backend
offers one (``_LAUNCHERS``), else ``ops.*_linear_eager``.

Also implemented: mm, addmm, matmul and ``@`` against ``weight.t()``; t/transpose; view/reshape
to the same shape; slice and cat (rows anywhere, columns on block boundaries; cat needs equal
per-tensor scales); detach, clone, alias, contiguous, ``to`` (device, and dtype: the dtype the
weight presents and dequantizes to), copy_; pickling and state_dict. Other ops raise
NotImplementedError naming the op.
"""

from __future__ import annotations

import functools
import hashlib
import warnings
import weakref
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import return_and_correct_aliasing
from torchao.utils import TorchAOBaseTensor, fill_defaults

from . import formats, ops
from .backends import backend_names, select, selection_scope

__all__ = ["QuantizedWeight", "MXFP8Weight", "NVFP4Weight"]

aten = torch.ops.aten


def _op_backend(backend: str, op: str, device: torch.device, m: int, n: int, k: int) -> str | None:
    """The ``backend=`` argument a weight passes to ``op``: its backend where that backend runs the
    op here, else None (defer to the registry: "auto", a GEMM-only backend asked to quantize an
    activation, or a backend this machine lacks or that is not registered here: a weight's backend
    is a preference)."""
    if backend == "auto":
        return None
    if not isinstance(m, int):  # a symbolic M (torch.compile with dynamic shapes): no M-dependent limit is
        m = 1  # asked here; the op body selects again with the real M
    return backend if select(op, device, m, n, k, None, backend).spec.name == backend else None


# The eager launchers of the quantized weights, by id of the weight's qdata (shared by a weight and
# the temporary untransposed weights of x @ w.t()): (a weak reference to that qdata, {(M, x dtype,
# x device index, (id, address, dtype) of the bias, weight backend, backends.selection_scope()):
# (launcher or None, bias)}). An entry counts only while the weight holds that same qdata object
# (the launchers bind its address and its scales'); when the qdata is freed (the weight freed, or
# its contents swapped: torch.utils.swap_tensors, as nn.Module.to does) its entries go. Nothing
# here holds a weight, its qdata or its block scales, nor a weak reference to the weight (which
# swap_tensors would refuse); the launchers hold the bias and the tensor scales. Kept outside the
# weights, so that pickling, deepcopy and torch.compile's tensor flattening never see them; a
# weight's entries start over at KEPT_LAUNCHERS.
_LAUNCHERS: dict[int, tuple[weakref.ref, dict[tuple, tuple]]] = {}
KEPT_LAUNCHERS = 64


def _forget_launchers(key: int, ref: weakref.ref) -> None:
    """The weak reference's callback: the qdata of ``_LAUNCHERS[key]`` was freed."""
    if _LAUNCHERS.get(key, (None,))[0] is ref:
        _LAUNCHERS.pop(key, None)


def _records_grad(x: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether autograd would record a linear of x and bias (the custom ops have no formula)."""
    return torch.is_grad_enabled() and (x.requires_grad or getattr(bias, "requires_grad", False))


@functools.cache
def _source_digest() -> str:
    """A digest of the package's Python sources, read once per process: what a quantized Linear
    traces to is their code, so an edited checkout (the same version) must not replay a graph that
    torch's on-disk cache holds from the code before (seen: stale graphs on torch 2.11)."""
    root = Path(__file__).parent
    digest = hashlib.blake2b(digest_size=16)
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


class QuantizedWeight(TorchAOBaseTensor):
    """Base of the weight subclasses: what every format shares.

    Attributes common to both formats: ``qdata`` and ``scale`` (canonical operands),
    ``orig_dtype`` (the dtype it presents), ``backend`` (a registered backend name or "auto"),
    ``transposed`` (True after ``.t()``, so that ``x @ w.t()`` works; the operands never move).
    """

    fmt: formats.Format  # set by each subclass

    @classmethod
    def _make_wrapper(cls, qdata: torch.Tensor, orig_dtype: torch.dtype, transposed: bool):
        n, k = qdata.shape[0], qdata.shape[1] * cls.fmt.elements_per_byte
        shape = (k, n) if transposed else (n, k)
        return torch.Tensor._make_wrapper_subclass(cls, shape, dtype=orig_dtype, device=qdata.device)

    def _replace(self, **changes) -> QuantizedWeight:
        """A new weight of the same class with some fields (tensors or attributes) replaced."""
        names, attributes = self.__tensor_flatten__()
        fields = {name: getattr(self, name) for name in names} | attributes | changes
        return type(self)(**fields)

    def _scales_2d(self) -> torch.Tensor:
        """The block scales as an [N, K / block_size] matrix (swizzling undone)."""
        n, k = self.qdata.shape[0], self.qdata.shape[1] * self.fmt.elements_per_byte
        return formats.from_blocked(self.scale, n, k // self.fmt.block_size)

    def _with_rows_and_cols(self, qdata: torch.Tensor, scales_2d: torch.Tensor) -> QuantizedWeight:
        """A weight with new qdata and the [rows, K / block_size] scales that go with it."""
        return self._replace(qdata=qdata.contiguous(), scale=formats.to_blocked(scales_2d))

    def _check(self) -> None:
        """Check the canonical operands once, when the weight is made (calls then check only the
        activation)."""
        fn = f"dq_kernels.{type(self).__name__}"
        formats.check_quantized(fn, self.fmt, "qdata", self.qdata, "scale", self.scale)
        for name in self.__tensor_flatten__()[0]:
            if name not in ("qdata", "scale"):
                formats.check_tensor_scale(fn, name, getattr(self, name), self.qdata.device)

    def _linear_rows(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """x [..., K] (M rows in all) @ weight.T (+ bias [N]) -> [..., N] of x's dtype: eager calls
        run a launcher kept per (qdata, M, dtype, device, bias, backend names in effect) where the
        backend offers one (``ops.linear_launcher``; it takes x as it is), else the op's body
        directly (``ops.*_eager``, on x as [M, K]); traced calls, and calls autograd would record,
        the custom ops."""
        if ops.tracing(x) or _records_grad(x, bias):
            return _on_rows(self._linear_op, x, bias)  # traced, or autograd would need a formula: the custom ops
        if not self._launches:  # no backend offers its op a launcher: no key to make
            self._check_bias(x, bias)
            return _on_rows(self._linear_eager, x, bias)
        m = x.shape[0] if x.dim() == 2 else x.numel() // x.shape[-1]
        bound = None if bias is None else (id(bias), bias.data_ptr(), bias.dtype)  # what a launcher binds
        key = (m, x.dtype, x.get_device(), bound, self.backend, selection_scope())
        q = self.qdata
        kept = _LAUNCHERS.get(id(q))
        entry = kept[1].get(key) if kept is not None and kept[0]() is q else None
        if entry is None:
            entry = self._keep_launcher(key, x, bias)
        return _on_rows(self._linear_eager, x, bias) if entry[0] is None else entry[0](x)

    def _keep_launcher(self, key: tuple, x: torch.Tensor, bias: torch.Tensor | None) -> tuple:
        """The entry of ``_LAUNCHERS`` for ``key`` (``_linear_rows``), made after checking the bias:
        (the launcher or None, the bias, which it holds so that ``id(bias)`` stays its own)."""
        self._check_bias(x, bias)
        q = self.qdata
        kept = _LAUNCHERS.get(id(q))
        if kept is None or kept[0]() is not q or len(kept[1]) >= KEPT_LAUNCHERS:
            kept = _LAUNCHERS[id(q)] = (weakref.ref(q, functools.partial(_forget_launchers, id(q))), {})
        entry = kept[1][key] = (self._launcher(x.reshape(key[0], x.shape[-1]), bias), bias)
        return entry

    def _check_bias(self, x: torch.Tensor, bias: torch.Tensor | None) -> None:
        """A bias must be None or [N] of a high-precision dtype on x's device."""
        n = self.qdata.shape[0]
        if bias is not None and (
            bias.dtype not in formats.HIGH_PRECISION_DTYPES or bias.shape != (n,) or bias.device != x.device
        ):
            raise ValueError(
                f"dq_kernels: the bias must be bfloat16, float16 or float32 [N = {n}] on {x.device}, "
                f"got {bias.dtype} {tuple(bias.shape)} on {bias.device}"
            )

    @property
    def _launches(self) -> bool:
        """Whether eager calls may find a launcher (``_launcher`` can return one)."""
        return True

    def _launcher(self, x: torch.Tensor, bias: torch.Tensor | None):
        """``ops.linear_launcher`` for this weight and activations like x, or None."""
        raise NotImplementedError

    def _linear_op(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """The linear through the custom ops (what torch.compile traces): the linear op, or, where
        ``ops.decoded_linear`` names a backend (never for a call autograd would record), the
        decoded cast (``ops.traced_cast``: once per traced activation, shared by the Linears that
        read it) then the decoded mm op on that backend (docs/compile.md)."""
        raise NotImplementedError

    def _linear_eager(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """The linear through ``ops.*_eager``: no custom-op dispatch, no weight checks."""
        raise NotImplementedError

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The weight as a plain [N, K] tensor ([K, N] if transposed) of ``dtype`` (default: its own)."""
        raise NotImplementedError

    def _describe(self) -> str:
        """The format-specific part of the repr."""
        raise NotImplementedError

    @staticmethod
    def _traced_by() -> tuple:
        """What decides the graph torch.compile traces for a quantized Linear, besides the weight:
        how it casts (``ops.compile_cast``), the backend name in effect (a ``use_backend`` block's,
        else the environment's), the registered backends, the package's code (``_source_digest``)."""
        return (ops.compile_cast(), selection_scope()[0], tuple(backend_names()), _source_digest())

    def _stable_hash_for_caching(self) -> str:
        """Key for torch.compile's AOT autograd cache (torch 2.14 asks for it, 2.11 does not):
        class, shape, attributes and the inner tensors' layouts (never their values), and
        ``_traced_by``."""
        names, attributes = self.__tensor_flatten__()
        inner = [(n, tuple(t.shape), t.stride(), t.dtype, t.device.type) for n in names for t in [getattr(self, n)]]
        key = (type(self).__qualname__, tuple(self.shape), sorted(attributes.items()), inner, self._traced_by())
        return hashlib.blake2b(repr(key).encode(), digest_size=16).hexdigest()

    def __getstate__(self) -> dict:
        """The pickled state: the attributes, and ``traced_by`` (``_traced_by()``, under a name of its
        own: a copy that sets the state as attributes must not hide the method). torch 2.11's AOT
        autograd cache keys a subclass input by its pickled state, not ``_stable_hash_for_caching``:
        without it a graph traced under another cast mode or backend choice came back from the
        on-disk cache (seen: DQ_KERNELS_COMPILE_CAST=shared ran the graph an earlier process traced
        with "op")."""
        return {**self.__dict__, "traced_by": self._traced_by()}

    def __init_subclass__(cls, **kwargs):
        """TorchAO sets each weight class's ``__setstate__`` here; unpickling (torch.load) leaves out
        ``traced_by``, which described the process that saved."""
        super().__init_subclass__(**kwargs)
        torchao_setstate = cls.__setstate__

        def __setstate__(self, state: dict) -> None:
            torchao_setstate(self, {name: value for name, value in state.items() if name != "traced_by"})

        cls.__setstate__ = __setstate__

    def __repr__(self) -> str:
        transposed = ", transposed=True" if self.transposed else ""
        return (
            f"{type(self).__name__}(shape={list(self.shape)}, dtype={self.dtype}, device={self.device}, "
            f"{self._describe()}, backend={self.backend!r}{transposed})"
        )


class MXFP8Weight(QuantizedWeight):
    """A Linear weight [N, K] in MXFP8 (K % 32 == 0). ``scaling`` ("rceil" or "floor") is the
    scale rule used for the weight and, at every call, for the activation."""

    fmt = formats.MXFP8
    tensor_data_names = ["qdata", "scale"]
    tensor_attribute_names = ["orig_dtype", "scaling", "backend", "transposed"]

    def __new__(cls, qdata, scale, orig_dtype, scaling, backend, transposed=False):
        self = cls._make_wrapper(qdata, orig_dtype, transposed)
        self.qdata, self.scale = qdata, scale
        self.orig_dtype, self.scaling, self.backend, self.transposed = orig_dtype, scaling, backend, transposed
        self._check()
        return self

    @classmethod
    def from_float(cls, w: torch.Tensor, scaling: str = "rceil", backend: str = "auto") -> MXFP8Weight:
        """Quantize a [N, K] bf16/fp16/fp32 weight (K % 32 == 0). A weight with nonzero blocks under a
        scale below 2^-124 (``formats.mxfp8_blocks_below_bf16``; values below about 2^-116) is outside
        the exact domain the Hopper kernels share, so under backend "auto" its result would depend on
        which kernel M selects: such a weight gets backend "reference" (exact at every M, slow), with
        a warning; under another backend only the warning."""
        n, k = w.shape[0], w.shape[-1]
        cast_backend = _op_backend(backend, "quantize_mxfp8", w.device, n, k, k)
        q, s = ops.quantize_mxfp8(w.detach(), scaling, backend=cast_backend)
        if backend != "reference" and (below := formats.mxfp8_blocks_below_bf16(q, s)):
            routed = backend == "auto"
            warnings.warn(
                f"dq_kernels: an MXFP8 weight [{n}, {k}] has {below} block(s) of nonzero values under a scale "
                f"below 2^-124, outside the exact domain of the Hopper kernels (docs/backend-selection.md"
                + ("): it runs on backend 'reference' at every M (exact, slow)" if routed else
                   f"): on backend {backend!r} its result may depend on M"),
                stacklevel=2,
            )
            backend = "reference" if routed else backend
        return cls(q, s, w.dtype, scaling, backend)

    def _linear_op(self, x, bias):
        m, (n, k) = x.shape[0], self.shape
        cast_backend = _op_backend(self.backend, "quantize_mxfp8", x.device, m, k, k)
        mm_backend = _op_backend(self.backend, "mxfp8_mm", x.device, m, n, k)
        decoded = None if _records_grad(x, bias) else ops.decoded_linear("mxfp8", x, n, k, cast_backend, mm_backend)
        if decoded is not None:
            (values,) = ops.traced_cast("mxfp8", x, self.scaling, cast_backend)
            return ops.mxfp8_mm_decoded(values, self.qdata, self.scale, bias, x.dtype, decoded)
        return ops.mxfp8_linear(x, self.qdata, self.scale, bias, self.scaling, cast_backend, mm_backend)

    def _linear_eager(self, x, bias):
        return ops.mxfp8_linear_eager(x, self.qdata, self.scale, bias, self.scaling, self.backend)

    def _launcher(self, x, bias):
        return ops.linear_launcher("mxfp8", x, self.qdata, self.scale, bias, self.backend, scaling=self.scaling)

    def dequantize(self, dtype=None):
        w = ops.dequantize_mxfp8(self.qdata, self.scale, dtype or self.dtype)
        return w.t() if self.transposed else w

    def _describe(self):
        return f"scaling={self.scaling!r}"


class NVFP4Weight(QuantizedWeight):
    """A Linear weight [N, K] in NVFP4 (K % 16 == 0).

    ``activation_scale``: None quantizes each activation with its own tensor scale
    (amax / 2688); a 0-dim float32 tensor is used as the static activation tensor scale.
    ``weight_only``: W4A16, the activation stays in high precision (``nvfp4_weight_only_mm``).
    """

    fmt = formats.NVFP4
    tensor_data_names = ["qdata", "scale", "tensor_scale"]
    tensor_attribute_names = ["orig_dtype", "weight_only", "backend", "transposed"]
    optional_tensor_data_names = ["activation_scale"]

    def __new__(
        cls, qdata, scale, tensor_scale, orig_dtype, weight_only, backend, transposed=False, activation_scale=None
    ):
        self = cls._make_wrapper(qdata, orig_dtype, transposed)
        self.qdata, self.scale, self.tensor_scale, self.activation_scale = qdata, scale, tensor_scale, activation_scale
        self.orig_dtype, self.weight_only, self.backend, self.transposed = orig_dtype, weight_only, backend, transposed
        self._check()
        return self

    @classmethod
    def from_float(
        cls,
        w: torch.Tensor,
        backend: str = "auto",
        weight_only: bool = False,
        activation_amax: float | None = None,
    ) -> NVFP4Weight:
        """Quantize a [N, K] bf16/fp16/fp32 weight (K % 16 == 0). ``activation_amax``: a calibrated
        max |activation|, turned into the static activation tensor scale amax / 2688."""
        k = w.shape[-1]
        cast_backend = _op_backend(backend, "quantize_nvfp4", w.device, w.shape[0], k, k)
        q, s, ts = ops.quantize_nvfp4(w.detach(), None, backend=cast_backend)
        activation_scale = None
        if activation_amax is not None:
            activation_amax = formats.check_activation_amax("NVFP4Weight.from_float", activation_amax)
            amax = torch.tensor(activation_amax, dtype=torch.float32, device=w.device)
            activation_scale = formats.nvfp4_tensor_scale(amax)
        return cls(q, s, ts, w.dtype, weight_only, backend, activation_scale=activation_scale)

    def _linear_op(self, x, bias):
        m, (n, k) = x.shape[0], self.shape
        if self.weight_only:
            backend = _op_backend(self.backend, "nvfp4_weight_only_mm", x.device, m, n, k)
            return ops.nvfp4_weight_only_mm(x, self.qdata, self.scale, self.tensor_scale, bias, backend=backend)
        cast_backend = _op_backend(self.backend, "quantize_nvfp4", x.device, m, k, k)
        mm_backend = _op_backend(self.backend, "nvfp4_mm", x.device, m, n, k)
        decoded = None if _records_grad(x, bias) else ops.decoded_linear("nvfp4", x, n, k, cast_backend, mm_backend)
        if decoded is not None:
            values, x_ts = ops.traced_cast("nvfp4", x, self.activation_scale, cast_backend)
            return ops.nvfp4_mm_decoded(
                values, x_ts, self.qdata, self.scale, self.tensor_scale, bias, x.dtype, decoded
            )
        return ops.nvfp4_linear(
            x, self.qdata, self.scale, self.tensor_scale, self.activation_scale, bias, cast_backend, mm_backend
        )

    @property
    def _launches(self):
        return not self.weight_only  # W4A16's GEMM-only op has no launcher

    def _launcher(self, x, bias):
        return ops.linear_launcher("nvfp4", x, self.qdata, self.scale, bias, self.backend, b_ts=self.tensor_scale,
                                   activation_scale=self.activation_scale)

    def _linear_eager(self, x, bias):
        if self.weight_only:
            return ops.nvfp4_weight_only_eager(x, self.qdata, self.scale, self.tensor_scale, bias, self.backend)
        return ops.nvfp4_linear_eager(
            x, self.qdata, self.scale, self.tensor_scale, self.activation_scale, bias, self.backend
        )

    def dequantize(self, dtype=None):
        w = ops.dequantize_nvfp4(self.qdata, self.scale, self.tensor_scale, dtype or self.dtype)
        return w.t() if self.transposed else w

    def _describe(self):
        if self.weight_only:
            return "activation=not quantized (weight-only)"
        return "activation=" + ("dynamic" if self.activation_scale is None else "static tensor scale")


# ----------------------------------------------------------------------------------------------
# Ops, registered on both format classes
# ----------------------------------------------------------------------------------------------

WEIGHT_CLASSES = (MXFP8Weight, NVFP4Weight)


def _implements(aten_ops=(), torch_fns=()):
    def register(fn):
        for cls in WEIGHT_CLASSES:
            if aten_ops:
                cls.implements(list(aten_ops))(fn)
            if torch_fns:
                cls.implements_torch_function(list(torch_fns))(fn)
        return fn

    return register


def _linear(x: torch.Tensor, w: QuantizedWeight, bias: torch.Tensor | None) -> torch.Tensor:
    """F.linear(x [..., K], w [N, K], bias [N]) -> [..., N]: leading dims folded into M, so the ops
    only ever see 2-D operands (no expand/bmm, whatever the batch)."""
    if isinstance(x, QuantizedWeight) or not isinstance(w, QuantizedWeight):
        raise NotImplementedError(
            "dq_kernels: a quantized weight can only be the weight operand of a linear (F.linear(x, w), "
            "x @ w.t(), torch.mm(x, w.t()), torch.addmm(bias, x, w.t()))"
        )
    if w.transposed:
        raise ValueError("dq_kernels: F.linear takes the weight as [N, K]; got a transposed quantized weight")
    n, k = w.qdata.shape[0], w.qdata.shape[1] * w.fmt.elements_per_byte  # w.shape would dispatch __torch_function__
    if x.shape[-1] != k:
        raise ValueError(f"dq_kernels: input of shape {tuple(x.shape)} does not match the weight [N={n}, K={k}]")
    if x.numel() == 0:  # an empty batch: nothing to quantize (the ops reject M = 0)
        out = x.new_zeros(0, n) if bias is None else bias.to(x.dtype).expand(0, n).clone()
        return out.reshape(*x.shape[:-1], n)
    return w._linear_rows(x, bias)


def _on_rows(linear, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``linear(x2, bias)`` for x2, x [..., K] as [M, K], returned as [..., N]; a 2-D x as it is
    (a reshape makes a tensor: 1-3 us of host time)."""
    if x.dim() == 2:
        return linear(x, bias)
    out = linear(x.reshape(-1, x.shape[-1]), bias)
    return out.reshape(*x.shape[:-1], out.shape[-1])


def _untransposed(b: torch.Tensor, op: str) -> QuantizedWeight:
    """For x @ b: b must be ``weight.t()``; return the weight itself."""
    if not isinstance(b, QuantizedWeight) or not b.transposed:
        raise NotImplementedError(
            f"dq_kernels: {op} supports x @ weight.t() with the quantized weight [N, K] transposed; "
            "use F.linear(x, weight)"
        )
    return b._replace(transposed=False)


@_implements(torch_fns=[F.linear])
def _(func, types, args, kwargs):
    x, w, bias = fill_defaults(args, 3, [None])
    return _linear(x, w, kwargs.get("bias", bias))


@_implements(torch_fns=[torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__])
def _(func, types, args, kwargs):
    x, b = args
    return _linear(x, _untransposed(b, "matmul"), None)


@_implements(aten_ops=[aten.mm.default])
def _(func, types, args, kwargs):
    x, b = args
    return _linear(x, _untransposed(b, "mm"), None)


@_implements(aten_ops=[aten.addmm.default])
def _(func, types, args, kwargs):
    bias, x, b = args
    if kwargs.get("beta", 1) != 1 or kwargs.get("alpha", 1) != 1 or bias.dim() != 1:
        raise NotImplementedError("dq_kernels: addmm supports bias [N] with beta = alpha = 1 only")
    return _linear(x, _untransposed(b, "addmm"), bias)


@_implements(aten_ops=[aten.t.default])
def _(func, types, args, kwargs):
    w = args[0]
    return return_and_correct_aliasing(func, args, kwargs, w._replace(transposed=not w.transposed))


@_implements(aten_ops=[aten.transpose.int])
def _(func, types, args, kwargs):
    w, dim0, dim1 = args
    if dim0 % 2 == dim1 % 2:  # transpose(0, 0), transpose(-1, 1), ...: no change
        return return_and_correct_aliasing(func, args, kwargs, w._replace())
    return return_and_correct_aliasing(func, args, kwargs, w._replace(transposed=not w.transposed))


@_implements(aten_ops=[aten.view.default, aten._unsafe_view.default])
def _(func, types, args, kwargs):
    w, size = args
    # resolve a -1 entry the way view does, by viewing an empty tensor of the same shape
    if tuple(torch.empty(w.shape, device="meta").view(size).shape) != tuple(w.shape):
        raise NotImplementedError(
            f"dq_kernels: a quantized weight of shape {list(w.shape)} can only be viewed as the same shape, "
            f"got {list(size)}"
        )
    return return_and_correct_aliasing(func, args, kwargs, w._replace())


@_implements(aten_ops=[aten.slice.Tensor])
def _(func, types, args, kwargs):
    w, dim, start, end, step = fill_defaults(args, 5, [0, None, None, 1])
    if w.transposed or step != 1:
        raise NotImplementedError("dq_kernels: slicing a quantized weight needs step 1 and an untransposed weight")
    dim = dim % 2
    start, end, _ = slice(start, end).indices(w.shape[dim])
    q, s = w.qdata, w._scales_2d()
    if dim == 0:
        sliced = w._with_rows_and_cols(q[start:end], s[start:end])
    else:
        block, per_byte = w.fmt.block_size, w.fmt.elements_per_byte
        if start % block or end % block:
            raise ValueError(
                f"dq_kernels: columns of a {w.fmt.name} weight can only be sliced on {block}-element block "
                f"boundaries, got [{start}:{end}]"
            )
        sliced = w._with_rows_and_cols(q[:, start // per_byte : end // per_byte], s[:, start // block : end // block])
    return return_and_correct_aliasing(func, args, kwargs, sliced)


@_implements(aten_ops=[aten.cat.default])
def _(func, types, args, kwargs):
    weights, dim = fill_defaults(args, 2, [0])
    first = weights[0]
    if any(type(w) is not type(first) for w in weights):
        raise ValueError(f"dq_kernels: cat needs weights of one class, got {[type(w).__name__ for w in weights]}")
    if any(w.transposed for w in weights):
        raise NotImplementedError("dq_kernels: cat of transposed quantized weights is not supported")
    names, attributes = first.__tensor_flatten__()
    per_tensor = [name for name in names if name not in ("qdata", "scale")]  # NVFP4's tensor scales
    for w in weights[1:]:
        if w.__tensor_flatten__() != (names, attributes):
            raise ValueError(f"dq_kernels: cat needs quantized weights with equal attributes; got {first!r} and {w!r}")
        for name in per_tensor:
            if not torch.equal(getattr(w, name), getattr(first, name)):
                raise ValueError(
                    f"dq_kernels: cannot concatenate {first.fmt.name} weights with different {name}s; "
                    "fuse the projections before quantizing"
                )
    qdata = torch.cat([w.qdata for w in weights], dim % 2)
    scales = torch.cat([w._scales_2d() for w in weights], dim % 2)
    return first._with_rows_and_cols(qdata, scales)


@_implements(aten_ops=[aten._to_copy.default])
def _(func, types, args, kwargs):
    w = args[0]
    to = w._get_to_kwargs(*args[1:], **kwargs)
    if to["dtype"] not in formats.HIGH_PRECISION_DTYPES:
        raise TypeError(
            f"dq_kernels: a quantized weight can present as bfloat16, float16 or float32, not {to['dtype']}"
        )
    names, _ = w.__tensor_flatten__()
    moved = {name: getattr(w, name).to(to["device"], non_blocking=to["non_blocking"]) for name in names}
    return w._replace(orig_dtype=to["dtype"], **moved)


@_implements(aten_ops=[aten.copy_.default])
def _(func, types, args, kwargs):
    dst, src = args[0], args[1]
    if not isinstance(dst, QuantizedWeight):
        # e.g. a plain Linear weight filled from a quantized one (diffusers' fuse_projections)
        dst.copy_(src.dequantize())
        return dst
    if not isinstance(src, QuantizedWeight):
        raise NotImplementedError(
            "dq_kernels: copying a plain tensor into a quantized weight is not supported; quantize the module instead"
        )
    dst_names, dst_attributes = dst.__tensor_flatten__()
    src_names, src_attributes = src.__tensor_flatten__()
    same = (
        type(dst) is type(src)
        and dst.shape == src.shape
        and dst_attributes == src_attributes
        and dst_names == src_names
        and all(getattr(dst, n).shape == getattr(src, n).shape for n in dst_names)
    )
    if not same:
        raise ValueError(
            f"dq_kernels: copy_ needs quantized weights of the same class, shape and attributes; got {dst!r} <- {src!r}"
        )
    for name in dst_names:
        getattr(dst, name).copy_(getattr(src, name))
    return dst


@_implements(torch_fns=[torch.Tensor.storage])
def _(func, types, args, kwargs):
    # safetensors asks for the storage of every tensor it saves; a weight subclass has none. This is
    # where diffusers' save_pretrained of a model quantized after loading ends up.
    raise RuntimeError(
        "dq_kernels: a quantized weight has no storage of its own and cannot be written to safetensors "
        "as a plain tensor. For a Diffusers model quantized after loading, call "
        "dq_kernels.diffusers.record_quantization(model) before save_pretrained (dq_kernels.diffusers.quantize "
        "does this), or quantize while loading: from_pretrained(..., quantization_config=...)"
    )
