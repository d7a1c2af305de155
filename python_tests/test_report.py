"""Plots from benchmark JSON (CPU only): one panel per format, the best of our backends per shape,
and the fixed colour of every series (the same in every plot)."""

import json

import pytest
from matplotlib.colors import to_hex

from dq_kernels.bench import report


def gemm_row(fmt, backend, us, speedup, op=None):
    row = {"format": fmt, "backend": backend, "M": 16, "K": 256, "N": 512, "us": us, "tflops": None,
           "speedup_vs_bf16": speedup, "rel_err": 1e-3, "config": ""}
    return row if op is None else {**row, "op": op}


GEMM_DOCUMENT = {
    "device": "test GPU", "date": "2026-12-06",
    "shapes": [{"M": 16, "K": 256, "N": 512, "label": "tiny"}],
    "rows": [
        gemm_row("bf16", "cublas", 10.0, 1.0), gemm_row("fp8", "cublas", 6.0, 1.67),
        gemm_row("mxfp8", "cutlass", 8.0, 1.25), gemm_row("mxfp8", "triton_sm90", 5.0, 2.0),
        gemm_row("mxfp8", "torchao", 4.0, 2.5),  # a comparison backend: never "our best"
        gemm_row("mxfp8", "decode_cublas", 9.0, 1.1), gemm_row("mxfp8", "cutlass", 7.0, 1.4, op="linear"),
        gemm_row("nvfp4", "cutlass", 4.0, 2.5),
    ],
}


def bars(ax) -> dict[str, tuple[str, list[float]]]:
    """legend label -> (bar colour, heights) of one panel."""
    return {c.get_label(): (to_hex(c.patches[0].get_facecolor()), [p.get_height() for p in c.patches])
            for c in ax.containers}


def test_gemm_plot_one_panel_per_format_best_backend_fixed_colours(tmp_path):
    fig = report.plot_gemm(GEMM_DOCUMENT["rows"], str(tmp_path / "g.png"), "test GPU", "2026-12-06")
    assert (tmp_path / "g.png").stat().st_size > 0
    mxfp8, nvfp4 = fig.axes
    assert mxfp8.get_title().startswith("mxfp8") and nvfp4.get_title().startswith("nvfp4")
    shown = bars(mxfp8)
    assert set(shown) == {"fp8 cuBLAS", "mxfp8", "decode_cublas", "mxfp8 linear"}
    assert shown["mxfp8"][1] == [2.0]  # triton_sm90's 2.0x beats cutlass; torchao's 2.5x is not ours
    assert [t.get_text() for t in mxfp8.texts] == ["triton_sm90", "cutlass"]  # the winners, named
    for name, (colour, _) in shown.items():
        assert colour == report.SERIES_COLOURS[name.removesuffix(" linear")]
    assert bars(nvfp4)["nvfp4"] == (report.SERIES_COLOURS["nvfp4"], [2.5])


def test_series_colours_are_fixed_and_distinct_where_they_meet():
    # series that share a panel must differ
    for panel in (("bf16", "fp8 cuBLAS", "decode_cublas", "mxfp8", "nvfp4", "nvfp4_w4a16"),
                  ("mxfp8", "nvfp4", "fp8_rowwise (torchao)", "mxfp8 (torchao)", "nvfp4 (torchao)"),
                  ("triton_cast", "torchao", "torchao_compiled"),
                  ("cutlass", "triton_sm90", "triton_sm100", "triton_stock", "reference", "torchao")):
        colours = [report.series_colour(name) for name in panel]
        assert len(set(colours)) == len(colours), panel
    assert report.series_colour("mxfp8 linear") == report.series_colour("mxfp8")
    assert report.series_colour("new_backend") == report.series_colour("new_backend")  # stable fallback


@pytest.mark.parametrize("kind", ["gemm", "quant", "model"])
def test_replot_from_json(tmp_path, kind):
    quant_rows = [{"format": "mxfp8", "backend": b, "M": 64, "K": 256, "us": 1.0, "tbps": t,
                   "speedup_vs_torchao": 1.0, "speedup_vs_torchao_compiled": 1.0}
                  for b, t in (("triton_cast", 2.5), ("torchao", 0.1))]
    model_rows = [{"model": "flux", "format": f, "backend": b, "batch": 1, "compile": "none", "step_ms": 10.0,
                   "speedup_vs_bf16": s, "peak_gib": None, "weights_gib": w, "rel_err": 0.0, "cosine": 1.0,
                   "compile_s": None} for f, b, s, w in (("bf16", "-", 1.0, 2.0), ("mxfp8", "auto", 0.9, 1.0))]
    rows = {"gemm": GEMM_DOCUMENT["rows"], "quant": quant_rows, "model": model_rows}[kind]
    source = tmp_path / f"{kind}.json"
    source.write_text(json.dumps({"device": "test GPU", "date": "2026-12-06", "rows": rows}))
    report.plot_json(str(source), str(tmp_path / f"{kind}.png"))
    assert (tmp_path / f"{kind}.png").stat().st_size > 0
    if kind == "model":
        assert (tmp_path / "model-memory.png").stat().st_size > 0


def test_replot_refuses_other_json(tmp_path):
    source = tmp_path / "other.json"
    source.write_text(json.dumps({"device": "x", "date": "y", "rows": [{"a": 1}]}))
    with pytest.raises(ValueError, match="not the JSON of `dq-kernels bench"):
        report.plot_json(str(source), str(tmp_path / "x.png"))


def test_shapes_shrunk_together_lose_their_labels():
    labels = report.shape_labels([(64, 256, 256, "ff up"), (64, 256, 256, "ff down"), (1, 256, 256, "norm1")])
    assert labels == {(1, 256, 256): "norm1"}
