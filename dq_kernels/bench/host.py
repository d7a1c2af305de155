"""Host time per eager Linear call (``dq-kernels bench host``).

What an eager diffusion step pays before any kernel runs: the launch-side wall time of one
``nn.Linear`` call (bias included, input [1, M, K], ``torch.inference_mode()``) for each quantized
format, beside bf16 ``F.linear`` and torchao's fp8 row-wise on the same machine and shapes.

Method: on a CUDA device a GPU spin is enqueued first, long enough to cover all the calls of a
round, so every launch returns at once and the wall clock of the loop is host time alone; the
median over rounds of (loop time / calls). Without a CUDA device the calls run on the CPU, their
arithmetic included (numbers then say little about the host path).
"""

from __future__ import annotations

import cProfile
import io
import pstats
import statistics
import time
from dataclasses import asdict, dataclass

import torch

from .. import backends
from ..config import MXFP8Config, NVFP4Config
from . import report

FORMATS = ("bf16", "fp8_rowwise", "mxfp8", "nvfp4", "nvfp4_w4a16")
DEFAULT_SHAPES = ((16, 3072, 3072), (4096, 3072, 3072))  # (M, K, N): input [1, M, K]
CPU_SHAPES = ((16, 256, 256),)
CALLS = 100  # calls per round: their launches must fit in the launch queue behind the spin
ROUNDS = 7
SPIN_CYCLES = 200_000_000  # ~0.1 s of GPU spin per round: longer than CALLS slow eager Linears

METHOD = (
    "launch-side wall time per eager nn.Linear call (bias, input [1, M, K], inference_mode): "
    f"{CALLS} calls per round behind a GPU spin that covers them, median of {ROUNDS} rounds"
)


@dataclass(frozen=True)
class Row:
    format: str  # "bf16", "fp8_rowwise", "mxfp8", "nvfp4", "nvfp4_w4a16"
    backend: str  # the GEMM backend the call ran ("cuBLAS" for bf16, "torchao" for fp8_rowwise)
    M: int
    K: int
    N: int
    host_us: float

    def to_json(self) -> dict:
        return asdict(self)


def _linear(fmt: str, k: int, n: int, device: str) -> torch.nn.Module:
    """An nn.Linear(k, n) with bias in bfloat16, its weight in ``fmt``."""
    from torchao.quantization import quantize_

    linear = torch.nn.Linear(k, n, bias=True, dtype=torch.bfloat16, device=device)
    if fmt == "mxfp8":
        quantize_(linear, MXFP8Config())
    elif fmt == "nvfp4":
        quantize_(linear, NVFP4Config())
    elif fmt == "nvfp4_w4a16":
        quantize_(linear, NVFP4Config(weight_only=True))
    elif fmt == "fp8_rowwise":
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow

        quantize_(linear, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))
    return linear


def _gemm_backend(fmt: str, m: int, k: int, n: int, device: torch.device) -> str:
    if fmt == "bf16":
        return "cuBLAS" if device.type == "cuda" else "torch"
    if fmt == "fp8_rowwise":
        return "torchao"
    op = {"mxfp8": "mxfp8_mm", "nvfp4": "nvfp4_mm", "nvfp4_w4a16": "nvfp4_weight_only_mm"}[fmt]
    return backends.select(op, device, m, n, k).spec.name


def host_us(call, device: torch.device) -> float:
    """Median host microseconds per ``call()`` (see the module docstring)."""
    call()  # warm up: compilation, caches
    calls = CALLS if device.type == "cuda" else 5
    per_call = []
    for _ in range(ROUNDS):
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda._sleep(SPIN_CYCLES)
        start = time.perf_counter()
        for _ in range(calls):
            call()
        per_call.append((time.perf_counter() - start) / calls * 1e6)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return statistics.median(per_call)


def unsupported_reason(fmt: str, device: torch.device) -> str | None:
    """Why ``fmt`` cannot be timed on ``device``, or None."""
    if fmt == "fp8_rowwise" and (device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 9)):
        return "torchao's fp8 row-wise needs a CUDA device of compute capability 8.9 or newer"
    return None


def run(shapes, formats, device: torch.device, profile: str | None = None) -> tuple[list[Row], list[str]]:
    """Rows for every (shape, format), and a note for each format skipped on this device. With
    ``profile`` (a format), the Python profile of its calls at the first shape is printed."""
    rows, notes = [], []
    for fmt in formats:
        reason = unsupported_reason(fmt, device)
        if reason:
            notes.append(f"skipped {fmt}: {reason}")
    for m, k, n in shapes:
        x = torch.randn(1, m, k, dtype=torch.bfloat16, device=device)
        for fmt in formats:
            if unsupported_reason(fmt, device):
                continue
            linear = _linear(fmt, k, n, str(device))  # made outside inference mode, as a model's layers are
            with torch.inference_mode():
                us = host_us(lambda: linear(x), device)
            rows.append(Row(fmt, _gemm_backend(fmt, m, k, n, device), m, k, n, round(us, 1)))
            print(f"  {fmt:12s} M={m} K={k} N={n}: {us:.1f} us per call", flush=True)
            if profile == fmt and (m, k, n) == tuple(shapes[0]):
                with torch.inference_mode():
                    print(_profile(lambda: linear(x), device))
    return rows, notes


def _profile(call, device: torch.device) -> str:
    """The top of a cProfile of CALLS calls (host time by function)."""
    profiler = cProfile.Profile()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda._sleep(SPIN_CYCLES)
    profiler.enable()
    for _ in range(CALLS):
        call()
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(30)
    return out.getvalue()


def table(rows: list[Row]) -> str:
    """A text table with each row's host time against the bf16 row of its shape."""
    bf16 = {(r.M, r.K, r.N): r.host_us for r in rows if r.format == "bf16"}
    lines = []
    for r in rows:
        base = bf16.get((r.M, r.K, r.N))
        ratio = f"{r.host_us / base:.2f}" if base else "-"
        lines.append([r.format, r.backend, f"{r.M}x{r.K}x{r.N}", f"{r.host_us:.1f}", ratio])
    return report.format_table(("format", "backend", "MxKxN", "host us", "x bf16"), [lines])
