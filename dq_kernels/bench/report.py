"""What every benchmark writes: terminal tables, the JSON header, and PNG plots of grouped bars.

Re-plot a committed result: ``python -m dq_kernels.bench.report FILE.json --plot FILE.png``.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import math
import platform
import zlib
from dataclasses import dataclass, field
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


# One colour per series name, the same in every plot (gemm, quant, model), so that a reader learns
# them once: greys for bf16, blues for cuBLAS fp8 paths, warm colours for ours (one per format),
# greens for torchao's. A series of the linear op has its mm series' colour, hatched.
SERIES_COLOURS = {
    "bf16": "#7f7f7f",
    "fp8 cuBLAS": "#1f77b4",
    "fp8_rowwise (torchao)": "#1f77b4",
    "decode_cublas": "#17becf",
    "mxfp8": "#ff7f0e",
    "nvfp4": "#d62728",
    "nvfp4_w4a16": "#8c564b",
    "nvfp4_static": "#e377c2",
    "mxfp8 (torchao)": "#2ca02c",
    "nvfp4 (torchao)": "#98df8a",
    # the backends by name (the CPU gemm plot and the quant plot have one series per backend)
    "cutlass": "#ff7f0e",
    "triton_sm90": "#9467bd",
    "triton_sm100": "#e377c2",
    "triton_cast": "#ff7f0e",
    "triton_stock": "#bcbd22",
    "reference": "#7f7f7f",
    "torchao": "#2ca02c",
    "torchao_compiled": "#006d2c",
}
# for a series not named above: picked from its name, so it is the same in every plot
FALLBACK_COLOURS = ("#aec7e8", "#ffbb78", "#c5b0d5", "#c49c94", "#dbdb8d", "#9edae5")
LINEAR_SUFFIX = " linear"
# gemm rows whose backend is a comparison, not one of our kernels: never "our best"
COMPARISON_BACKENDS = ("cublas", "decode_cublas", "reference", "torchao", "triton_stock")
GEMM_FORMATS = ("mxfp8", "nvfp4", "nvfp4_w4a16")


def series_colour(name: str) -> str:
    """The fixed colour of a series (see SERIES_COLOURS); "X linear" has the colour of "X"."""
    base = name.removesuffix(LINEAR_SUFFIX)
    return SERIES_COLOURS.get(base) or FALLBACK_COLOURS[zlib.crc32(base.encode()) % len(FALLBACK_COLOURS)]


@dataclass
class Panel:
    """One subplot of grouped bars: one group per x label, one bar per series in each group.

    series: name -> one value per group (None leaves a gap); notes: name -> one text per group,
    written above that bar (e.g. which backend won), or None.
    """

    title: str
    groups: list[str]
    series: dict[str, list[float | None]]
    notes: dict[str, list[str | None]] = field(default_factory=dict)


def plot_panels(path: str, title: str, panels: Sequence[Panel], ylabel: str, reference_line: float | None = None,
                reference_label: str = "", log_scale: bool = False):
    """Write a PNG with the panels stacked vertically, each with its own legend; returns the Figure.

    reference_line draws a dashed line at that value in every panel (e.g. 1.0 for a speedup),
    named reference_label in the legend.
    """
    # The Agg canvas directly, not pyplot, so plotting never changes matplotlib's global state.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    most_groups = max(len(p.groups) for p in panels)
    fig = Figure(figsize=(max(8.0, 1.0 * most_groups + 3), 3.6 * len(panels) + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle(title, fontsize=11)
    for ax, panel in zip(fig.subplots(len(panels), 1, squeeze=False)[:, 0], panels):
        width = 0.8 / max(1, len(panel.series))
        for i, (name, values) in enumerate(panel.series.items()):
            x = [g + (i - (len(panel.series) - 1) / 2) * width for g in range(len(panel.groups))]
            heights = [math.nan if v is None else v for v in values]
            hatch = "//" if name.endswith(LINEAR_SUFFIX) else None
            ax.bar(x, heights, width, label=name, color=series_colour(name), hatch=hatch, edgecolor="white")
            for xi, h, note in zip(x, heights, panel.notes.get(name, [None] * len(x))):
                if note and not math.isnan(h):
                    ax.annotate(note, (xi, h), xytext=(0, 2), textcoords="offset points", ha="center",
                                va="bottom", rotation=90, fontsize=6)
        if reference_line is not None:
            ax.axhline(reference_line, color=SERIES_COLOURS["bf16"], linestyle="--", linewidth=1, label=reference_label)
        if log_scale:
            ax.set_yscale("log")
        else:
            ax.set_ylim(top=ax.get_ylim()[1] * 1.15)  # room for the notes above the bars
        ax.set_xticks(range(len(panel.groups)), panel.groups, fontsize=7)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.set_title(panel.title, fontsize=10)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        ax.grid(axis="y", alpha=0.3)
    fig.savefig(path, dpi=110)
    return fig


def _gemm_series_name(row: dict) -> str:
    """The series a timed gemm row belongs to: "fp8 cuBLAS", "decode_cublas" or its format (our
    backends), with " linear" for rows of the linear op (rows without "op" are mm rows)."""
    base = "fp8 cuBLAS" if row["format"] == "fp8" else "decode_cublas" if row["backend"] == "decode_cublas" else row["format"]
    return base if row.get("op", "mm") == "mm" else base + LINEAR_SUFFIX


def shape_labels(shapes: Sequence[tuple[int, int, int, str | None]]) -> dict[tuple[int, int, int], str]:
    """(M, K, N, label) -> {(M, K, N): label}, leaving out the shapes that carry several labels (the
    FLUX shapes shrunk for the CPU coincide), so no plot names a shape after only one of them."""
    found: dict[tuple[int, int, int], set] = {}
    for m, k, n, label in shapes:
        found.setdefault((m, k, n), set()).add(label)
    return {shape: names.pop() for shape, names in found.items() if len(names) == 1 and None not in names}


def plot_gemm(rows: Sequence[dict], path: str, device: str, date: str, labels: dict | None = None):
    """`bench gemm` rows (as in its JSON) -> PNG, one panel per format; returns the Figure.

    Timed rows: the speedup vs bf16 cuBLAS per shape of fp8 cuBLAS, decode_cublas (when present)
    and the best of our backends (its name above the bar). Untimed rows (no CUDA device): the
    relative error of each backend, log scale. labels: (M, K, N) -> a shape's name (the JSON's
    "shapes").
    """
    labels = labels or {}
    shapes = list(dict.fromkeys((r["M"], r["K"], r["N"]) for r in rows))
    groups = [(f"{labels[s]}\n" if labels.get(s) else "") + "x".join(map(str, s)) for s in shapes]
    timed = any(r["us"] is not None for r in rows)
    panels = []
    for fmt in [f for f in GEMM_FORMATS if any(r["format"] == f for r in rows)]:
        panel = Panel(f"{fmt}: our best backend per shape (named above its bar)" if timed else fmt, groups, {})
        for r in rows:
            i = shapes.index((r["M"], r["K"], r["N"]))
            if not timed:
                if r["format"] == fmt:
                    name = r["backend"] + ("" if r.get("op", "mm") == "mm" else LINEAR_SUFFIX)
                    panel.series.setdefault(name, [None] * len(shapes))[i] = r["rel_err"]
                continue
            ours = r["backend"] not in COMPARISON_BACKENDS
            if r["format"] == "fp8" or (r["format"] == fmt and (ours or r["backend"] == "decode_cublas")):
                name = _gemm_series_name(r)
                values = panel.series.setdefault(name, [None] * len(shapes))
                notes = panel.notes.setdefault(name, [None] * len(shapes))
                if r["speedup_vs_bf16"] is not None and (values[i] is None or r["speedup_vs_bf16"] > values[i]):
                    values[i], notes[i] = r["speedup_vs_bf16"], r["backend"] if ours else None
        panels.append(panel)
    if timed:
        return plot_panels(path, f"GEMM speedup vs bf16 cuBLAS - {device}, {date}", panels, "x bf16 cuBLAS",
                           reference_line=1.0, reference_label="bf16 cuBLAS")
    return plot_panels(path, f"GEMM relative error vs the reference backend (no CUDA device: not timed) - {device}, "
                       f"{date}", panels, "relative error", log_scale=True)


def plot_quant(rows: Sequence[dict], path: str, device: str, date: str) -> None:
    """`bench quant` rows -> PNG: effective TB/s per input shape, one panel per cast, a bar per backend."""
    shapes = list(dict.fromkeys((r["M"], r["K"]) for r in rows))
    panels = []
    for case in dict.fromkeys(r["format"] for r in rows):
        series: dict[str, list[float | None]] = {}
        for r in rows:
            if r["format"] == case:
                series.setdefault(r["backend"], [None] * len(shapes))[shapes.index((r["M"], r["K"]))] = r["tbps"]
        panels.append(Panel(case, [f"{m}x{k}" for m, k in shapes], series))
    plot_panels(path, f"Activation casts, effective bandwidth - {device}, {date}", panels, "TB/s")


def _model_config(row: dict) -> str:
    """"mxfp8" on auto, "mxfp8 (torchao)" on another backend, "bf16" (backend "-")."""
    return row["format"] if row["backend"] in ("auto", "-") else f"{row['format']} ({row['backend']})"


def plot_model(rows: Sequence[dict], path: str, device: str, date: str) -> None:
    """`bench model` rows -> two PNGs, one panel per model, one group per (batch, compile mode):
    ``path`` the step time x bf16 of each configuration (where measured), and ``path`` with
    ``-memory`` before the suffix the transformer's weight GiB."""
    models = list(dict.fromkeys(r["model"] for r in rows))

    def panels(value, with_bf16: bool) -> list[Panel]:
        result = []
        for model in models:
            own = [r for r in rows if r["model"] == model]
            groups = list(dict.fromkeys(f"batch {r['batch']}\n{r['compile']}" for r in own))
            series: dict[str, list[float | None]] = {}
            for r in own:
                if with_bf16 or r["format"] != "bf16":
                    values = series.setdefault(_model_config(r), [None] * len(groups))
                    values[groups.index(f"batch {r['batch']}\n{r['compile']}")] = value(r)
            result.append(Panel(model, groups, series))
        return result

    plot_panels(path, f"Diffusion transformer step time vs bf16 (higher is faster) - {device}, {date}",
                panels(lambda r: r["speedup_vs_bf16"], False), "x bf16", reference_line=1.0, reference_label="bf16")
    stem, dot, suffix = path.rpartition(".")
    memory_path = f"{stem}-memory.{suffix}" if dot else f"{path}-memory"
    plot_panels(memory_path, f"Transformer weight memory - {device}, {date}", panels(lambda r: r["weights_gib"], True),
                "GiB")


def plot_json(json_path: str, png_path: str) -> None:
    """Draw the plot of a `bench gemm`, `bench quant` or `bench model` JSON file again."""
    with open(json_path) as f:
        document = json.load(f)
    rows, device, date = document["rows"], document["device"], document["date"]
    if rows and "model" in rows[0]:
        plot_model(rows, png_path, device, date)
    elif rows and "tbps" in rows[0]:
        plot_quant(rows, png_path, device, date)
    elif rows and "N" in rows[0]:
        labels = shape_labels([(s["M"], s["K"], s["N"], s["label"]) for s in document.get("shapes", [])])
        plot_gemm(rows, png_path, device, date, labels)
    else:
        raise ValueError(f"{json_path}: not the JSON of `dq-kernels bench gemm`, `quant` or `model` (no rows "
                         "with an N, a tbps or a model field)")


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref||_F / ||ref||_F in float64."""
    ref = ref.double()
    return ((out.double() - ref).norm() / ref.norm()).item()


def main() -> None:
    parser = argparse.ArgumentParser(description="Draw the plot of a dq-kernels bench JSON file again.")
    parser.add_argument("json", help="a `dq-kernels bench gemm|quant|model --json` file")
    parser.add_argument("--plot", required=True, metavar="PATH", help="the PNG to write")
    args = parser.parse_args()
    plot_json(args.json, args.plot)
    print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
