"""``dq-kernels bench gemm``: every format x op x backend on a set of GEMM shapes, against cuBLAS.

On a CUDA device, for each shape: the two cuBLAS baselines (bf16 ``torch.mm`` and fp8 tensor-wise
``torch._scaled_mm``), then each requested format x op x backend. Two ops per format:

* ``mm``: the mm op on canonical quantized operands, quantized once outside the timed region, so
  the row times only the mm call (output: ``--out-dtype``).
* ``linear``: what a quantized Linear runs inside a model: ``mxfp8_linear`` / ``nvfp4_linear`` on
  the bf16 activation (the activation cast included, dynamic NVFP4 tensor scale, ``cast_backend``
  auto, the row's backend as ``mm_backend``; bf16 output); for nvfp4_w4a16 the linear op is the
  weight-only mm itself.

Without a CUDA device the same calls run on the CPU on shrunk shapes and only the numerics are
reported.

Errors are relative Frobenius norms computed in float64: a format row against the "reference"
backend on the same quantized operands (float32 output), a baseline against the float64 product of
the bf16 inputs.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from tqdm import tqdm

import dq_kernels
import dq_kernels.backends
from dq_kernels import formats
from dq_kernels.backends import cutlass
from dq_kernels.bench import report, timing
from dq_kernels.bench.shapes import Shape

FORMATS = ("mxfp8", "nvfp4", "nvfp4_w4a16")
OPS = ("mm", "linear")
# the op that a format's rows time; nvfp4_w4a16 is the NVFP4 weight with the bf16 activation as is
MM_OPS = {"mxfp8": "mxfp8_mm", "nvfp4": "nvfp4_mm", "nvfp4_w4a16": "nvfp4_weight_only_mm"}
BASELINES = (("bf16", "cublas"), ("fp8", "cublas"))
AUTO = "auto"  # a backend name for the rows: what the ops choose when a call names no backend
REFERENCE_BACKEND = "reference"
SEED = 0

# A backend that cannot run a shape says so with one of these; the row is skipped with a note.
BACKEND_SKIP_ERRORS = (dq_kernels.BackendUnavailableError, NotImplementedError)


@dataclass
class Row:
    """One measured (shape, format, op, backend). us and speedup_vs_bf16 are None without a GPU;
    transient_mib: the temporary buffers of a backend that reports them (``transient_bytes``), in
    MiB, else None. The baselines' op is "mm" (a bf16 GEMM is both ops)."""

    shape: Shape
    format: str
    backend: str
    us: float | None
    rel_err: float
    config: str
    speedup_vs_bf16: float | None = None
    op: str = "mm"
    transient_mib: float | None = None

    @property
    def tflops(self) -> float | None:
        return None if self.us is None else self.shape.flops / self.us / 1e6

    def to_json(self) -> dict:
        return {
            "format": self.format,
            "op": self.op,
            "backend": self.backend,
            "M": self.shape.M,
            "K": self.shape.K,
            "N": self.shape.N,
            "us": self.us,
            "tflops": self.tflops,
            "speedup_vs_bf16": self.speedup_vs_bf16,
            "rel_err": self.rel_err,
            "config": self.config,
            "transient_mib": self.transient_mib,
        }

    @classmethod
    def from_json(cls, row: dict) -> Row:
        """A row as ``to_json`` writes it; rows written before the op field (no "op") are mm rows."""
        return cls(Shape(row["M"], row["K"], row["N"]), row["format"], row["backend"], row["us"], row["rel_err"],
                   row["config"], row["speedup_vs_bf16"], row.get("op", "mm"), row.get("transient_mib"))


@dataclass
class Skip:
    """A (shape, format, op, backend) that could not run, and why."""

    shape: Shape
    format: str
    op: str
    backend: str
    reason: str

    def note(self) -> str:
        return f"skipped {self.format} {self.op} / {self.backend} at {self.shape}: {self.reason}"

    def to_json(self) -> dict:
        return {"format": self.format, "op": self.op, "backend": self.backend, "M": self.shape.M, "K": self.shape.K,
                "N": self.shape.N, "reason": self.reason}


@dataclass
class Result:
    rows: list[Row] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)


def select_backends(formats: Sequence[str], names: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """(format, backend) pairs to run, in format order.

    By default every available backend implementing the format's mm. Backends named explicitly are kept
    even when unavailable, so that the row is skipped with the backend's own reason; "auto" runs
    every format with the backend the ops choose for each shape.
    """
    statuses = {s.name: s for s in dq_kernels.available_backends()}
    if names is None:
        names = [name for name, s in statuses.items() if s.available]
    return [(fmt, name) for fmt in formats for name in names if name == AUTO or MM_OPS[fmt] in statuses[name].ops]


def random_operands(shape: Shape, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded standard-normal bf16 operands: a [M, K] and b [N, K] (a Linear weight)."""
    gen = torch.Generator(device=device).manual_seed(SEED)
    a = torch.randn(shape.M, shape.K, generator=gen, device=device, dtype=torch.bfloat16)
    b = torch.randn(shape.N, shape.K, generator=gen, device=device, dtype=torch.bfloat16)
    return a, b


def to_fp8_tensorwise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """bf16 [R, K] -> (float8_e4m3fn [R, K], float32 0-dim scale = amax / 448); x ~ q * scale."""
    scale = x.abs().amax().float() / formats.E4M3_MAX
    q = (x.float() / scale).clamp(-formats.E4M3_MAX, formats.E4M3_MAX).to(torch.float8_e4m3fn)
    return q, scale


class ShapeCase:
    """The operands of one shape, with their quantized forms and references made on first use."""

    def __init__(self, shape: Shape, device: str, out_dtype: torch.dtype):
        self.shape = shape
        self.out_dtype = out_dtype
        self.a, self.b = random_operands(shape, device)
        self._cache: dict[str, object] = {}

    def _cached(self, key: str, make: Callable[[], object]):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def quantized(self, fmt: str) -> tuple[torch.Tensor, ...]:
        """The mm operands of ``fmt``: (a_q, a_s, b_q, b_s) for mxfp8, (a_q, a_s, a_ts, b_q, b_s, b_ts)
        for nvfp4, quantized once per shape."""
        quantize = dq_kernels.quantize_mxfp8 if fmt == "mxfp8" else dq_kernels.quantize_nvfp4
        return self._cached(fmt, lambda: (*quantize(self.a), *quantize(self.b)))

    def output_dtype(self, fmt: str, op: str) -> torch.dtype:
        """The output dtype of a row: a's (bf16) for the linear ops and W4A16, else --out-dtype's."""
        return self.a.dtype if op == "linear" or fmt == "nvfp4_w4a16" else self.out_dtype

    def call(self, fmt: str, backend: str, out_dtype: torch.dtype | None = None, op: str = "mm") -> Callable[[], torch.Tensor]:
        """A no-argument function running the product a @ b.T for (fmt, op, backend); nothing else
        runs inside it, so timing it times only the op (for "linear" the activation cast included)."""
        out_dtype = out_dtype or self.out_dtype
        if op == "linear" and fmt == "mxfp8":
            b_q, b_s = self.quantized(fmt)[2:]
            return functools.partial(dq_kernels.mxfp8_linear, self.a, b_q, b_s, mm_backend=backend)
        if op == "linear" and fmt == "nvfp4":
            b_q, b_s, b_ts = self.quantized(fmt)[3:]
            return functools.partial(dq_kernels.nvfp4_linear, self.a, b_q, b_s, b_ts, mm_backend=backend)
        if fmt == "bf16":
            return functools.partial(torch.mm, self.a, self.b.t())
        if fmt == "fp8":
            a8, sa = self._cached("fp8 a", lambda: to_fp8_tensorwise(self.a))
            b8, sb = self._cached("fp8 b", lambda: to_fp8_tensorwise(self.b))
            return functools.partial(torch._scaled_mm, a8, b8.t(), sa, sb, out_dtype=out_dtype)
        if fmt == "nvfp4_w4a16":
            b_q, b_s, b_ts = self.quantized("nvfp4")[3:]
            return functools.partial(dq_kernels.nvfp4_weight_only_mm, self.a, b_q, b_s, b_ts, backend=backend)
        mm = dq_kernels.mxfp8_mm if fmt == "mxfp8" else dq_kernels.nvfp4_mm
        return functools.partial(mm, *self.quantized(fmt), out_dtype=out_dtype, backend=backend)

    def _nvfp4_weight(self) -> torch.Tensor:
        """b quantized to NVFP4 and decoded back to float32 [N, K]."""
        b_q, b_s, b_ts = self.quantized("nvfp4")[3:]
        return dq_kernels.dequantize_nvfp4(b_q, b_s, b_ts, torch.float32)

    def reference(self, fmt: str) -> torch.Tensor:
        """What a row of ``fmt`` is compared with: float64 a @ b.T for the baselines (for
        nvfp4_w4a16 with b decoded from NVFP4), the reference backend's float32 output on the same
        quantized operands for a block-scaled format (for the linear op too: its cast of a gives
        those operands bit for bit)."""
        if fmt in ("bf16", "fp8"):
            return self._cached("exact", lambda: self.a.double() @ self.b.double().t())
        if fmt == "nvfp4_w4a16":  # the bf16 activation times the dequantized weight, in float64
            return self._cached("w4a16 exact", lambda: self.a.double() @ self._nvfp4_weight().double().t())
        return self._cached(f"{fmt} ref", lambda: self.call(fmt, REFERENCE_BACKEND, torch.float32)())


def kernel_config(fmt: str, backend: str, shape: Shape) -> str:
    if backend == "cublas":
        return ""
    return dq_kernels.backends.get_backend(backend).kernel_config(fmt, shape.M, shape.N, shape.K)


def skip_errors(backend: str) -> tuple[type[Exception], ...]:
    # cuBLAS refuses some shapes with a plain RuntimeError (fp8 needs N % 16 == 0); from our own
    # backends only the declared "cannot run this" errors are skipped, so a kernel bug still crashes.
    return (RuntimeError,) if backend == "cublas" else BACKEND_SKIP_ERRORS


def first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def runs_on(case: ShapeCase, fmt: str, backend: str) -> str:
    """The backend a row's mm runs on: ``backend``, or for "auto" the one auto picks for the shape."""
    if backend != AUTO:
        return backend
    s = case.shape
    return dq_kernels.backends.select(MM_OPS[fmt], case.a.device, s.M, s.N, s.K, AUTO).spec.name


def linear_note(case: ShapeCase, fmt: str, backend: str) -> str:
    """How a linear row's cast runs, for its config: " one call" where the mm backend runs cast and
    GEMM in one call (``backends.LinearPlan.fused``), with ", cast in GEMM" where the GEMM kernel
    quantizes the activation itself (``cutlass.linear_kernel``); "" otherwise."""
    if fmt not in ("mxfp8", "nvfp4"):
        return ""
    s = case.shape
    plan = dq_kernels.backends.plan_linear(fmt, case.a.device, s.M, s.N, s.K, case.a.dtype, None, backend)
    if not plan.fused:
        return ""
    in_gemm = plan.mm.spec.name == "cutlass" and cutlass.linear_kernel(fmt, s.M, s.N, s.K, case.a.dtype) == "quantizing_skinny"
    return " one call, cast in GEMM" if in_gemm else " one call"


def transient_mib(case: ShapeCase, fmt: str, op: str, backend: str) -> float | None:
    """The temporary buffers of a row's call in MiB, for a backend that reports them, else None."""
    if fmt not in MM_OPS:  # a cuBLAS baseline
        return None
    transient_bytes = getattr(dq_kernels.backends.get_backend(backend), "transient_bytes", None)
    if transient_bytes is None:
        return None
    s = case.shape
    one_call = op == "linear" and fmt in ("mxfp8", "nvfp4") and dq_kernels.backends.plan_linear(
        fmt, case.a.device, s.M, s.N, s.K, case.a.dtype, None, backend).fused
    return transient_bytes(MM_OPS[fmt], s.M, s.N, s.K, case.output_dtype(fmt, op), one_call=one_call) / 2**20


def bench_shape(case: ShapeCase, triples: Sequence[tuple[str, str, str]], timed: bool, progress: tqdm, result: Result) -> None:
    """Run (and when ``timed``, time) every (format, op, backend) on one shape; append to result."""
    rows = []
    for fmt, op, backend in triples:
        progress.set_postfix_str(f"{case.shape} {fmt} {op} {backend}")
        try:
            call = case.call(fmt, backend, case.output_dtype(fmt, op), op)
            out = call()
        except skip_errors(backend) as err:
            result.skipped.append(Skip(case.shape, fmt, op, backend, first_line(err)))
        else:
            us = timing.median_us(call) if timed else None
            error = report.rel_err(out, case.reference(fmt))
            name = runs_on(case, fmt, backend)
            config = kernel_config(fmt, name, case.shape)
            if name != backend:
                config = f"{name} {config}".rstrip()
            if op == "linear":
                config += linear_note(case, fmt, backend)
            rows.append(Row(case.shape, fmt, backend, us, error, config, op=op,
                            transient_mib=transient_mib(case, fmt, op, name)))
        progress.update()
    bf16_us = next((r.us for r in rows if r.format == "bf16"), None)
    for row in rows:
        if bf16_us is not None and row.us is not None:
            row.speedup_vs_bf16 = bf16_us / row.us
    result.rows.extend(rows)


def run(shapes: Sequence[Shape], pairs: Sequence[tuple[str, str]], out_dtype: torch.dtype, device: str,
        ops: Sequence[str] = OPS) -> Result:
    """Bench every shape. device "cuda": baselines plus each of ``ops`` for each (format, backend)
    of ``pairs``, timed; "cpu": ``ops`` x ``pairs`` only, numerics only."""
    timed = device == "cuda"
    triples = [(fmt, op, backend) for fmt in FORMATS for op in ops for f, backend in pairs if f == fmt]
    per_shape = ([(fmt, "mm", backend) for fmt, backend in BASELINES] + triples) if timed else triples
    result = Result()
    with tqdm(total=len(shapes) * len(per_shape), desc="bench gemm", file=sys.stderr, disable=None) as progress:
        for shape in shapes:
            bench_shape(ShapeCase(shape, device, out_dtype), per_shape, timed, progress, result)
    return result


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(rows: Sequence[Row]) -> str:
    """The terminal table, one block of rows per shape."""
    headers = ("shape", "M", "K", "N", "format", "op", "backend", "us", "TFLOP/s", "x bf16", "rel err", "tmp MiB",
               "config")
    groups: dict[Shape, list[list[str]]] = {}
    for r in rows:
        group = groups.setdefault(r.shape, [])
        label = "" if group else (r.shape.label or str(r.shape))
        group.append([label, str(r.shape.M), str(r.shape.K), str(r.shape.N), r.format, r.op, r.backend,
                      _fmt(r.us, ".1f"), _fmt(r.tflops, ".1f"), _fmt(r.speedup_vs_bf16, ".2f"),
                      _fmt(r.rel_err, ".2e"), _fmt(r.transient_mib, ".1f"), r.config])
    return report.format_table(headers, list(groups.values()), right_aligned=(1, 2, 3, 7, 8, 9, 10, 11))


def plot(rows: Sequence[Row], path: str, device: str, date: str) -> None:
    """PNG, one panel per format: speedup vs bf16 cuBLAS per shape when timed, else the relative
    error (log scale); see ``report.plot_gemm``."""
    labels = report.shape_labels([(r.shape.M, r.shape.K, r.shape.N, r.shape.label) for r in rows])
    report.plot_gemm([r.to_json() for r in rows], path, device, date, labels)
