"""``dq-kernels selftest``: does every backend on this machine compute the right thing here?

For every available backend and every op it implements:

* the GEMM ops (``mxfp8_mm``, ``nvfp4_mm``, ``nvfp4_weight_only_mm``) over a fixed grid of shapes
  (``GRID``: M 1 .. 4096, N 1000 and 3072, K 160, 3072 and 4160; with and without a bias; bfloat16
  and float32 output) against the fp64 oracle: both operands decoded to float64
  (``formats.dequantize_*``), multiplied in float64, the bias added in float64. The error of a case
  is ``max |out - oracle| / max |oracle|`` (the worst element, relative to the output's largest
  magnitude); it passes when the error is at most ``tolerance(out_dtype, K)``. Once more per
  shape with NaN in every padding byte of both operands' 128x4 swizzled scales (variant "fp32
  NaN padding"): a backend that lets the padding reach valid outputs fails it (the layout's
  padding is zero as our quantizers write it, but scales made elsewhere may hold anything there);
* the casts (``quantize_mxfp8`` in both scaling modes, ``quantize_nvfp4`` with a dynamic and a given
  tensor scale) against ``dq_kernels.formats``: qdata, scales (padding included) and tensor scale
  bit-identical.

Operands are seeded standard-normal tensors quantized by ``dq_kernels.formats`` on the device. On a
CUDA device each case calls the public op with ``backend=<name>``, so a shape a backend refuses is
reported as skipped with its reason. Without one the quick grid (``QUICK_GRID``) runs on the CPU:
the backends that run on CPU tensors, and under ``TRITON_INTERPRET=1`` the Triton backends'
kernels in the interpreter (their methods called directly, since the ops send Triton backends CUDA
tensors only).

Times are wall-clock seconds of one call after the checked call (which compiles and warms up),
synchronized before and after on CUDA: a smoke figure, not a benchmark (``dq-kernels bench gemm``).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch

import dq_kernels
from dq_kernels import backends, formats
from dq_kernels.backends import BackendUnavailableError, base

MM_OPS = ("mxfp8_mm", "nvfp4_mm", "nvfp4_weight_only_mm")
CAST_OPS = ("quantize_mxfp8", "quantize_nvfp4")
OP_FORMAT = {"mxfp8_mm": "mxfp8", "nvfp4_mm": "nvfp4", "nvfp4_weight_only_mm": "nvfp4"}
DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float32: "fp32"}
SEED = 0


@dataclass(frozen=True)
class Grid:
    ms: tuple[int, ...]
    ns: tuple[int, ...]
    ks: tuple[int, ...]
    # (with a bias, output dtype) pairs checked for every shape
    variants: tuple[tuple[bool, torch.dtype], ...] = (
        (False, torch.bfloat16), (True, torch.bfloat16), (False, torch.float32), (True, torch.float32),
    )  # fmt: skip


# The fixed grid: M from one token to a full tile grid, partial tiles (77, 300) and more than one
# wave (4096); N not a multiple of 128 (1000); K whose scale columns need padding (160 / 32 = 5,
# 4160 / 32 = 130) and one that needs none (3072).
GRID = Grid(ms=(1, 16, 77, 128, 300, 512, 4096), ns=(1000, 3072), ks=(160, 3072, 4160))
# Small enough for the CPU and the Triton interpreter within about a minute; still partial tiles,
# padded scale columns, both output dtypes and a bias.
QUICK_GRID = Grid(ms=(1, 77, 130), ns=(136,), ks=(160,), variants=((False, torch.float32), (True, torch.bfloat16)))

# Tolerances of the error defined above: the rounding of the output (two bf16 roundings, of unit
# roundoff 2^-8 each: a bf16 product plus a bf16 bias, as torchao adds it; none for float32) plus 4
# fp32 unit roundoffs per accumulated product (fp32 accumulation in any order).
ROUNDING = {torch.bfloat16: 2 * 2.0**-8, torch.float32: 0.0}
ACCUMULATION_PER_K = 4 * 2.0**-24

# Ops a backend's kernel cannot be checked for under the Triton interpreter, and why.
INTERPRETER_GAPS = {
    ("triton_sm100", "nvfp4_mm"): "Triton's interpreter decodes the e4m3 scales of tl.dot_scaled as E8M0 "
    "(python_tests/test_sm100.py patches it); checked on a GPU only",
}


def tolerance(out_dtype: torch.dtype, k: int) -> float:
    """The largest error a GEMM case of this output dtype and reduction length K may have."""
    return ROUNDING[out_dtype] + ACCUMULATION_PER_K * k


@dataclass
class Case:
    """One checked call. ``status``: pass, fail (error above tolerance, or casts not bit-identical),
    error (the call raised), skip (the backend refuses this shape; ``note`` says why)."""

    backend: str
    op: str
    m: int
    n: int | None  # None for casts
    k: int
    variant: str  # mm: "bf16" / "fp32" output, "+bias", " NaN padding"; casts: scaling mode or tensor-scale kind
    status: str
    error: float | None = None
    tolerance: float | None = None
    seconds: float | None = None
    note: str = ""


def _device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def interpreted_backends(device: torch.device) -> list[str]:
    """Triton backends whose kernels this run calls directly on CPU tensors (TRITON_INTERPRET=1, no GPU)."""
    if device.type != "cpu" or not base.triton_interpreted():
        return []
    return [
        name for name in backends.backend_names()
        if isinstance(backends.get_backend(name), base.TritonBackend) and backends.get_backend(name).availability()[0]
    ]  # fmt: skip


def plan(device: torch.device) -> list[tuple[str, str, bool]]:
    """(backend, op, direct) for every op of every backend that runs here; direct: call the
    backend's method (interpreted Triton) instead of the public op."""
    available = {s.name for s in dq_kernels.available_backends() if s.available}
    interpreted = interpreted_backends(device)
    chosen = []
    for name in backends.backend_names():
        if name in available or name in interpreted:
            for op in backends.get_backend(name).spec.ops:
                chosen.append((name, op, name not in available))
    return chosen


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    _synchronize(device)
    start = time.perf_counter()
    fn()
    _synchronize(device)
    return time.perf_counter() - start


def _relative_error(out: torch.Tensor, oracle: torch.Tensor) -> float:
    """max |out - oracle| / max |oracle| in float64 (NaN or inf anywhere: inf)."""
    diff = (out.double() - oracle).abs().max().item()
    scale = oracle.abs().max().item()
    if diff != diff or diff == float("inf"):
        return float("inf")
    return diff / scale if scale else diff


class Operands:
    """Seeded operands of one (M, N, K), quantized by ``dq_kernels.formats`` on first use, and the
    fp64 oracles."""

    def __init__(self, m: int, n: int, k: int, device: torch.device):
        gen = torch.Generator(device=device).manual_seed(SEED + m * 7 + n * 13 + k)
        self.x = torch.randn(m, k, generator=gen, device=device)
        self.w = torch.randn(n, k, generator=gen, device=device)
        self.bias = torch.randn(n, generator=gen, device=device).to(torch.bfloat16)
        self._quantized: dict[str, tuple] = {}
        self._oracles: dict[tuple, torch.Tensor] = {}

    def quantized(self, fmt: str, nan_padding: bool = False) -> tuple[tuple, tuple]:
        """(a, b) canonical operands of ``fmt``; ``nan_padding``: with NaN (0xFF) in every padding
        byte of their scales."""
        if (fmt, nan_padding) not in self._quantized:
            if nan_padding:
                k = self.x.shape[1]
                a, b = self.quantized(fmt)
                a = (a[0], nan_padded(a[1], fmt, self.x.shape[0], k), *a[2:])
                b = (b[0], nan_padded(b[1], fmt, self.w.shape[0], k), *b[2:])
            else:
                quantize = formats.quantize_mxfp8 if fmt == "mxfp8" else formats.quantize_nvfp4
                a, b = quantize(self.x), quantize(self.w)
            self._quantized[fmt, nan_padding] = (a, b)
        return self._quantized[fmt, nan_padding]

    def oracle(self, op: str, out_dtype: torch.dtype, with_bias: bool) -> torch.Tensor:
        """The fp64 product of ``op`` on these operands (W4A16: of the activation in ``out_dtype``,
        as the op gets it), computed once per (op, activation, bias)."""
        fmt = OP_FORMAT[op]
        key = (op, out_dtype if op == "nvfp4_weight_only_mm" else None, with_bias)
        if key not in self._oracles:
            decode = formats.dequantize_mxfp8 if fmt == "mxfp8" else formats.dequantize_nvfp4
            a_op, b_op = self.quantized(fmt)
            if op == "nvfp4_weight_only_mm":
                a64 = self.x.to(out_dtype).double()
            else:
                a64 = decode(*a_op, torch.float32).double()
            out = a64 @ decode(*b_op, torch.float32).double().T
            self._oracles[key] = out + self.bias.double() if with_bias else out
        return self._oracles[key]


def nan_padded(s: torch.Tensor, fmt: str, rows: int, k: int) -> torch.Tensor:
    """A copy of swizzled scales ``s`` of a [rows, k] operand with every padding byte (scale rows
    >= rows, scale columns >= k / block) 0xFF: NaN as E8M0 and as e4m3."""
    rows_pad, cols_pad = formats.FORMATS[fmt].scale_shape(rows, k)
    grid = formats.from_blocked(s, rows_pad, cols_pad).view(torch.uint8).clone()
    grid[rows:] = 0xFF
    grid[:, k // formats.FORMATS[fmt].block_size :] = 0xFF
    return formats.to_blocked(grid).view(s.dtype).reshape(s.shape)


def has_padding(fmt: str, m: int, n: int, k: int) -> bool:
    """Whether the scales of an [m, k] x [n, k] problem have padding bytes."""
    return m % 128 != 0 or n % 128 != 0 or (k // formats.FORMATS[fmt].block_size) % 4 != 0


def _mm_call(name, op, direct, ops: Operands, bias, out_dtype, nan_padding) -> Callable[[], torch.Tensor]:
    """A no-argument call of GEMM ``op`` on backend ``name`` (public op, or its method if ``direct``)."""
    a_op, b_op = ops.quantized(OP_FORMAT[op], nan_padding)
    target = backends.get_backend(name) if direct else None
    if op == "nvfp4_weight_only_mm":
        a = ops.x.to(out_dtype)
        if direct:
            return lambda: target.nvfp4_weight_only_mm(a, *b_op, bias)
        return lambda: dq_kernels.nvfp4_weight_only_mm(a, *b_op, bias, backend=name)
    if direct:
        method = getattr(target, op)
        return lambda: method(*a_op, *b_op, bias, out_dtype)
    public = dq_kernels.mxfp8_mm if op == "mxfp8_mm" else dq_kernels.nvfp4_mm
    return lambda: public(*a_op, *b_op, bias=bias, out_dtype=out_dtype, backend=name)


def check_mm(
    name: str, op: str, direct: bool, ops: Operands, with_bias: bool, out_dtype: torch.dtype, nan_padding=False
) -> Case:
    m, n, k = ops.x.shape[0], ops.w.shape[0], ops.x.shape[1]
    variant = DTYPE_NAMES[out_dtype] + ("+bias" if with_bias else "") + (" NaN padding" if nan_padding else "")
    case = Case(name, op, m, n, k, variant, "skip", tolerance=tolerance(out_dtype, k))
    spec = backends.get_backend(name).spec
    reason = INTERPRETER_GAPS.get((name, op)) if direct else None
    if direct and reason is None:
        reason = spec.shape_reason(op, m, n, k)
    if reason:
        case.note = reason
        return case
    call = _mm_call(name, op, direct, ops, ops.bias if with_bias else None, out_dtype, nan_padding)
    try:
        out = call()
    except BackendUnavailableError as e:
        case.note = str(e)
        return case
    except Exception as e:  # noqa: BLE001 - a crash is a result to report, not to stop on
        case.status, case.note = "error", f"{type(e).__name__}: {e}"
        return case
    expected = ops.oracle(op, out_dtype, with_bias)
    if out.shape != expected.shape or out.dtype != out_dtype:
        case.status = "fail"
        case.note = f"returned {out.dtype} {tuple(out.shape)}, expected {out_dtype} {tuple(expected.shape)}"
        return case
    case.error = _relative_error(out, expected)
    case.status = "pass" if case.error <= case.tolerance else "fail"
    case.seconds = _timed(call, ops.x.device)
    return case


CAST_VARIANTS = {"quantize_mxfp8": ("rceil", "floor"), "quantize_nvfp4": ("dynamic", "given")}


def check_cast(name: str, op: str, direct: bool, x: torch.Tensor, variant: str) -> Case:
    """One cast of bf16 ``x`` [M, K] against dq_kernels.formats, bit for bit."""
    m, k = x.shape
    case = Case(name, op, m, None, k, variant, "skip")
    target = backends.get_backend(name)
    if op == "quantize_mxfp8":
        expected = formats.quantize_mxfp8(x, variant)
        call = (lambda: target.quantize_mxfp8(x, variant)) if direct else (
            lambda: dq_kernels.quantize_mxfp8(x, variant, backend=name))
    else:
        given = formats.nvfp4_tensor_scale(x) * 2 if variant == "given" else None
        expected = formats.quantize_nvfp4(x, given)
        call = (lambda: target.quantize_nvfp4(x, given)) if direct else (
            lambda: dq_kernels.quantize_nvfp4(x, given, backend=name))
    try:
        got = call()
    except BackendUnavailableError as e:
        case.note = str(e)
        return case
    except Exception as e:  # noqa: BLE001
        case.status, case.note = "error", f"{type(e).__name__}: {e}"
        return case
    names = ("qdata", "scales", "tensor scale")
    different = [
        what for what, g, e in zip(names, got, expected)
        if g.shape != e.shape or not torch.equal(g.reshape(-1).view(torch.uint8), e.reshape(-1).view(torch.uint8))
    ]  # fmt: skip
    case.status = "fail" if different else "pass"
    case.note = f"not bit-identical: {', '.join(different)}" if different else ""
    case.seconds = _timed(call, x.device)
    return case


def run(grid: Grid, only: list[str] | None = None, progress: Callable[[str], None] = print) -> list[Case]:
    """Every check of ``grid`` on the current device (CUDA if present, else CPU) for every
    backend that runs here (``only``: those backends only); ``progress`` gets one line per shape."""
    device = _device()
    chosen = [(name, op, direct) for name, op, direct in plan(device) if only is None or name in only]
    mm = [c for c in chosen if c[1] in MM_OPS]
    casts = [c for c in chosen if c[1] in CAST_OPS]
    cases: list[Case] = []
    shapes = [(m, n, k) for k in grid.ks for n in grid.ns for m in grid.ms]
    for i, (m, n, k) in enumerate(shapes, 1):
        started = time.perf_counter()
        ops = Operands(m, n, k, device)
        for name, op, direct in mm:
            for with_bias, out_dtype in grid.variants:
                cases.append(check_mm(name, op, direct, ops, with_bias, out_dtype))
            if has_padding(OP_FORMAT[op], m, n, k):
                cases.append(check_mm(name, op, direct, ops, False, torch.float32, nan_padding=True))
        failed = sum(c.status in ("fail", "error") for c in cases)
        progress(f"[{i}/{len(shapes)}] GEMMs M={m} N={n} K={k}: {time.perf_counter() - started:.1f} s, "
                 f"{failed} failed so far")
    cast_shapes = [(m, k) for k in grid.ks for m in grid.ms]
    for i, (m, k) in enumerate(cast_shapes, 1):
        x = Operands(m, 1, k, device).x.to(torch.bfloat16)
        for name, op, direct in casts:
            for variant in CAST_VARIANTS[op]:
                cases.append(check_cast(name, op, direct, x, variant))
        progress(f"[{i}/{len(cast_shapes)}] casts M={m} K={k}")
    return cases


def summary_rows(cases: list[Case]) -> list[list[str]]:
    """One table row per (backend, op, variant kind): cases, result, worst error and its tolerance,
    total seconds."""
    groups: dict[tuple[str, str, str], list[Case]] = {}
    for c in cases:
        groups.setdefault((c.backend, c.op, c.variant.removesuffix("+bias")), []).append(c)
    rows = []
    for (name, op, variant), group in groups.items():
        ran = [c for c in group if c.status != "skip"]
        bad = [c for c in ran if c.status in ("fail", "error")]
        result = "skipped" if not ran else f"FAIL {len(bad)}/{len(ran)}" if bad else f"pass {len(ran)}/{len(ran)}"
        if len(ran) < len(group):
            result += f" ({len(group) - len(ran)} skipped)"
        errors = [c for c in ran if c.error is not None]
        worst = max(errors, key=lambda c: c.error / c.tolerance if c.tolerance else c.error, default=None)
        error = "-" if worst is None else f"{worst.error:.2e}"
        tol = "bit-identical" if op in CAST_OPS else "-" if worst is None else f"{worst.tolerance:.2e} (K={worst.k})"
        seconds = f"{sum(c.seconds or 0.0 for c in ran):.3f}" if ran else "-"
        rows.append([name, op, variant, result, error, tol, seconds])
    return rows


TABLE_HEADERS = ("backend", "op", "variant", "result", "max rel err", "tolerance", "time s")


def problems(cases: list[Case]) -> list[str]:
    """A line for each failed or crashed case, and one per distinct skip reason."""
    lines = [f"{c.status.upper()} {c.backend} {c.op} M={c.m} N={c.n} K={c.k} {c.variant}: "
             + (f"error {c.error:.3e} > {c.tolerance:.3e}" if c.error is not None else c.note)
             for c in cases if c.status in ("fail", "error")]
    skips = dict.fromkeys((c.backend, c.op, c.note) for c in cases if c.status == "skip")
    lines += [f"skipped {name} {op}: {note}" for name, op, note in skips]
    return lines


def to_json(cases: list[Case]) -> list[dict]:
    return [asdict(c) for c in cases]


def failed(cases: list[Case]) -> bool:
    return any(c.status in ("fail", "error") for c in cases)
