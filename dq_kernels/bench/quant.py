"""``dq-kernels bench quant``: the activation casts (quantize ops) against torchao's own casts.

Per [M, K] bf16 input and case, each timed with ``timing.median_us`` (cold L2):

* ``mxfp8``: RCEIL MXFP8 with swizzled scales; ``nvfp4``: NVFP4 with a dynamic tensor scale (the
  amax pass and the cast, both timed); ``nvfp4_static``: NVFP4 with a given tensor scale.
* backends: ``triton_cast`` and ``cutlass`` (ours: the Triton casts and the native library's CUDA
  casts, through the custom op; a backend that cannot run here is skipped, saying why), ``torchao`` (torchao's eager cast:
  ``to_mx(..., is_swizzled_scales=True)``, or ``nvfp4_quantize`` + ``to_blocked`` as
  ``NVFP4Tensor.to_nvfp4`` does, the amax included for the dynamic case), ``torchao_compiled``
  (the same function under ``torch.compile(dynamic=True)``, compiled once per case).

Effective bandwidth counts the bytes the cast must move: the input read (twice for the dynamic
NVFP4 case, whose amax pass reads it too), qdata and the padded swizzled scales written.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from tqdm import tqdm

import dq_kernels
from dq_kernels import backends, formats
from dq_kernels.bench import report, timing

CASES = ("mxfp8", "nvfp4", "nvfp4_static")
OURS = ("triton_cast", "cutlass")  # our cast backends
BACKENDS = OURS + ("torchao", "torchao_compiled")
DEFAULT_SHAPES = tuple((m, k) for m in (4096, 4608, 16384) for k in (3072, 12288, 15360))
SEED = 0


def parse_mk(text: str) -> tuple[int, int]:
    """``"4096x3072"`` -> (4096, 3072); ValueError naming the form MxK (K a multiple of 32)."""
    parts = text.strip().lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() for p in parts) or int(parts[0]) < 1 or int(parts[1]) < 1:
        raise ValueError(f"bad shape {text!r}: expected MxK with positive integers, e.g. 4096x3072")
    m, k = int(parts[0]), int(parts[1])
    if k % 32:
        raise ValueError(f"bad shape {text!r}: K = {k} is not a multiple of 32 (expected MxK)")
    return m, k


def bytes_moved(case: str, m: int, k: int) -> int:
    """Bytes the cast of a bf16 [m, k] input must read and write (see the module docstring)."""
    fmt = formats.MXFP8 if case == "mxfp8" else formats.NVFP4
    reads = 2 if case == "nvfp4" else 1
    scale_rows, scale_cols = fmt.scale_shape(m, k)
    return reads * m * k * 2 + m * k // fmt.elements_per_byte + scale_rows * scale_cols


def torchao_cast(case: str) -> Callable:
    """torchao's cast for ``case`` as a function of (x, tensor_scale); returns plain tensors."""
    from torchao.prototype.mx_formats.config import ScaleCalculationMode
    from torchao.prototype.mx_formats.mx_tensor import to_mx
    from torchao.prototype.mx_formats.nvfp4_tensor import nvfp4_quantize, per_tensor_amax_to_scale
    from torchao.prototype.mx_formats.utils import to_blocked

    def mxfp8(x, ts):
        return to_mx(x, torch.float8_e4m3fn, 32, ScaleCalculationMode.RCEIL, is_swizzled_scales=True)

    def nvfp4(x, ts):
        if ts is None:
            ts = per_tensor_amax_to_scale(torch.max(torch.abs(x)))
        scales, qdata = nvfp4_quantize(x, 16, ts)
        return to_blocked(scales), qdata

    return mxfp8 if case == "mxfp8" else nvfp4


def our_cast(case: str, x: torch.Tensor, ts: torch.Tensor, backend: str) -> Callable[[], object]:
    if case == "mxfp8":
        return functools.partial(dq_kernels.quantize_mxfp8, x, "rceil", backend=backend)
    return functools.partial(dq_kernels.quantize_nvfp4, x, ts if case == "nvfp4_static" else None, backend=backend)


def runnable(names: Sequence[str], device: torch.device) -> list[str]:
    """Those of our cast backends ``names`` that can run both casts on ``device``; says on stderr
    why the others are skipped."""
    kept = []
    for name in names:
        try:
            for op in ("quantize_mxfp8", "quantize_nvfp4"):
                backends.select(op, device, 1, 32, 32, requested=name)
            kept.append(name)
        except backends.BackendUnavailableError as e:
            print(f"bench quant: skipping {name}: {e}", file=sys.stderr)
    return kept


@dataclass
class Row:
    case: str
    backend: str
    m: int
    k: int
    us: float
    speedup_vs_torchao: float | None = None
    speedup_vs_torchao_compiled: float | None = None

    @property
    def tbps(self) -> float:
        return bytes_moved(self.case, self.m, self.k) / self.us / 1e6

    def to_json(self) -> dict:
        return {"format": self.case, "backend": self.backend, "M": self.m, "K": self.k, "us": self.us,
                "tbps": self.tbps, "speedup_vs_torchao": self.speedup_vs_torchao,
                "speedup_vs_torchao_compiled": self.speedup_vs_torchao_compiled}


def run(shapes: Sequence[tuple[int, int]], cases: Sequence[str]) -> list[Row]:
    """Time every case x backend on every shape (CUDA only)."""
    compiled = {case: torch.compile(torchao_cast(case), dynamic=True) for case in cases}
    ours = runnable(OURS, torch.device("cuda", torch.cuda.current_device()))
    rows: list[Row] = []
    total = len(shapes) * len(cases) * (len(ours) + len(BACKENDS) - len(OURS))
    with tqdm(total=total, desc="bench quant", file=sys.stderr, disable=None) as bar:
        for m, k in shapes:
            x = torch.randn(m, k, generator=torch.Generator("cuda").manual_seed(SEED), device="cuda", dtype=torch.bfloat16)
            ts = formats.nvfp4_tensor_scale(x)
            for case in cases:
                calls = {name: our_cast(case, x, ts, name) for name in ours} | {
                    "torchao": functools.partial(torchao_cast(case), x, ts if case == "nvfp4_static" else None),
                    "torchao_compiled": functools.partial(compiled[case], x, ts if case == "nvfp4_static" else None),
                }
                times = {}
                for backend, call in calls.items():
                    bar.set_postfix_str(f"{m}x{k} {case} {backend}")
                    call()  # compile / warm up
                    times[backend] = timing.median_us(call)
                    bar.update()
                for backend, us in times.items():
                    rows.append(Row(case, backend, m, k, us, times["torchao"] / us, times["torchao_compiled"] / us))
    return rows


def table(rows: Sequence[Row]) -> str:
    headers = ("M", "K", "format", "backend", "us", "TB/s", "x torchao", "x compiled")
    groups: dict[tuple[int, int], list[list[str]]] = {}
    for r in rows:
        groups.setdefault((r.m, r.k), []).append(
            [str(r.m), str(r.k), r.case, r.backend, f"{r.us:.1f}", f"{r.tbps:.2f}",
             f"{r.speedup_vs_torchao:.2f}", f"{r.speedup_vs_torchao_compiled:.2f}"])
    return report.format_table(headers, list(groups.values()), right_aligned=(0, 1, 4, 5, 6, 7))


def plot(rows: Sequence[Row], path: str, device: str, date: str) -> None:
    """PNG: effective TB/s per shape, one panel per case, a bar per backend (``report.plot_quant``)."""
    report.plot_quant([r.to_json() for r in rows], path, device, date)
