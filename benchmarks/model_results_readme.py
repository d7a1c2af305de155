"""Regenerate the README's model-results table from committed `dq-kernels bench model` JSON.

    python benchmarks/model_results_readme.py benchmarks/results/model-h100.json \
        [--readme README.md] [--provenance docs/benchmarks.md]

Writes two generated blocks, so the numbers are never typed by hand:
- README.md, between `<!-- model-results:begin -->` and `<!-- model-results:end -->`: a one-line
  provenance (device, versions, date, the first command) and two compact tables: the step time
  of each configuration as x bf16 per (model, batch, compile mode), then the weight memory and the
  worst final-latent error per (format, backend) and model.
- docs/benchmarks.md, between `<!-- model-provenance:begin -->` and `<!-- model-provenance:end -->`:
  the JSON's full command and timing text (which rows came from which run).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

README_MARKERS = ("<!-- model-results:begin -->", "<!-- model-results:end -->")
PROVENANCE_MARKERS = ("<!-- model-provenance:begin -->", "<!-- model-provenance:end -->")


def config_name(row: dict) -> str:
    """A column name for a row's (format, backend): "mxfp8" on auto, "mxfp8 (torchao)" otherwise."""
    return row["format"] if row["backend"] in ("auto", "-") else f"{row['format']} ({row['backend']})"


def markdown_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)] + ["| " + " | ".join(r) + " |" for r in rows]


def first_command(command: str) -> str:
    """The first `dq-kernels ...` command in the JSON's command text (which may list several runs),
    without its --json and --plot outputs."""
    found = re.search(r"dq-kernels [^,;]*", command)
    return re.sub(r" --(json|plot) \S+", "", found.group(0)).strip() if found else command


def speed_table(rows: list[dict]) -> list[str]:
    """One line per (model, batch, compile): bf16 ms/step, then every other configuration as x bf16."""
    names = [n for n in dict.fromkeys(config_name(r) for r in rows) if n != "bf16"]
    by_run: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        by_run.setdefault((r["model"], r["batch"], r["compile"]), {})[config_name(r)] = r
    lines = []
    for (model, batch, compile_mode), configs in by_run.items():
        bf16 = configs.get("bf16")
        cells = [f"{configs[n]['speedup_vs_bf16']:.2f}x" if n in configs else "-" for n in names]
        lines.append([model, str(batch), compile_mode, f"{bf16['step_ms']:.1f}" if bf16 else "-", *cells])
    return markdown_table(["model", "batch", "compile", "bf16 ms/step", *names], lines)


def memory_error_table(rows: list[dict]) -> list[str]:
    """One line per configuration: per model, its weight GiB and its largest final-latent error vs bf16."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    cells: dict[str, dict[str, tuple[float, float]]] = {}
    for r in rows:
        weights, err = cells.setdefault(config_name(r), {}).get(r["model"], (r["weights_gib"], 0.0))
        cells[config_name(r)][r["model"]] = (weights, max(err, r["rel_err"]))
    lines = [[name, *[f"{by_model[m][0]:.2f} / {by_model[m][1]:.3f}" if m in by_model else "-" for m in models]]
             for name, by_model in cells.items()]
    return markdown_table(["config", *[f"{m} GiB / rel err" for m in models]], lines)


def readme_section(document: dict, source: str) -> str:
    provenance = (f"{document['device']}, torch {document['torch']}, Triton {document['triton']}, torchao "
                  f"{document['torchao']}, {document['date']}: `{first_command(document['command'])}` and the "
                  f"runs in [docs/benchmarks.md](docs/benchmarks.md#model-results).")
    rows = document["rows"]
    return "\n".join([provenance, "", *speed_table(rows), "", *memory_error_table(rows)])


def provenance_section(document: dict, source: str) -> str:
    return (f"`{source}`: {document['device']}, torch {document['torch']}, Triton {document['triton']}, "
            f"torchao {document['torchao']}, dq_kernels {document['dq_kernels']}, {document['date']}.\n\n"
            f"Runs: {document['command']}.\n\nTiming: {document['timing']}.")


def replace_block(path: Path, markers: tuple[str, str], body: str) -> None:
    begin, end = markers
    text = path.read_text()
    if begin not in text or end not in text:
        raise SystemExit(f"{path} has no {begin} ... {end} markers")
    block = f"{begin}\n{body}\n{end}"
    path.write_text(re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text, flags=re.DOTALL))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", help="a `dq-kernels bench model --json` file")
    parser.add_argument("--readme", default="README.md")
    parser.add_argument("--provenance", default="docs/benchmarks.md")
    args = parser.parse_args()
    document = json.loads(Path(args.json).read_text())
    replace_block(Path(args.readme), README_MARKERS, readme_section(document, args.json))
    replace_block(Path(args.provenance), PROVENANCE_MARKERS, provenance_section(document, args.json))
    print(f"updated {args.readme} and {args.provenance} from {args.json} ({len(document['rows'])} rows)")


if __name__ == "__main__":
    main()
