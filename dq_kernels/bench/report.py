"""What every benchmark writes: terminal tables, the JSON header, and grouped-bar PNG plots."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import math
import platform
from typing import Sequence

import torch

import dq_kernels


def package_versions() -> dict[str, str]:
    """Versions of python and the packages a result depends on ("not installed" where absent).

    Read from the installed metadata, so nothing heavy (triton, torchao, diffusers) is imported.
    """
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("triton", "torchao", "diffusers"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    versions["dq_kernels"] = dq_kernels.__version__
    return versions


def json_header(device: str, command: str, timing: str) -> dict:
    """The top-level keys of every benchmark's JSON file; the caller adds "rows" (and may add more).

    device: the GPU name, or "cpu"; command: the command line as typed; timing: how times were taken.
    """
    versions = package_versions()
    return {
        "device": device,
        "torch": versions["torch"],
        "triton": versions["triton"],
        "torchao": versions["torchao"],
        "python": versions["python"],
        "dq_kernels": versions["dq_kernels"],
        "date": datetime.date.today().isoformat(),
        "command": command,
        "timing": timing,
    }


def write_json(path: str, document: dict) -> None:
    with open(path, "w") as f:
        json.dump(document, f, indent=2)
        f.write("\n")


def format_table(headers: Sequence[str], groups: Sequence[Sequence[Sequence[str]]], right_aligned: Sequence[int] = ()) -> str:
    """Plain-text table: a header, a rule, then each group of rows with a blank line between groups.

    Columns listed in ``right_aligned`` (indexes) are right-aligned, the others left-aligned.
    """
    all_rows = [list(headers)] + [list(row) for group in groups for row in group]
    widths = [max(len(row[i]) for row in all_rows) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        cells = [c.rjust(w) if i in right_aligned else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        return "  ".join(cells).rstrip()

    lines = [line(headers), "  ".join("-" * w for w in widths)]
    for i, group in enumerate(groups):
        if i > 0:
            lines.append("")
        lines.extend(line(row) for row in group)
    return "\n".join(lines)


def plot_grouped_bars(
    path: str,
    groups: Sequence[str],
    series: dict[str, Sequence[float | None]],
    title: str,
    ylabel: str,
    reference_line: float | None = None,
    log_scale: bool = False,
) -> None:
    """Write a PNG of grouped bars: one group per x label, one coloured bar per series in it.

    series: name -> one value per group (None leaves a gap); reference_line draws a dashed
    horizontal line at that value (e.g. 1.0 for a speedup).
    """
    # The Agg canvas directly, not pyplot, so plotting never changes matplotlib's global state.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(8.0, 1.2 * len(groups) + 3), 5.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        x = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        heights = [math.nan if v is None else v for v in values]
        ax.bar(x, heights, width, label=name)
    if reference_line is not None:
        ax.axhline(reference_line, color="black", linestyle="--", linewidth=1)
    if log_scale:
        ax.set_yscale("log")
    ax.set_xticks(range(len(groups)), groups, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.savefig(path, dpi=120)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref||_F / ||ref||_F in float64."""
    ref = ref.double()
    return ((out.double() - ref).norm() / ref.norm()).item()
