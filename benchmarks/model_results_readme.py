"""Regenerate the README's model-results section from committed `dq-kernels bench model` JSON.

    python benchmarks/model_results_readme.py benchmarks/results/model-h100.json [--readme README.md]

Replaces the text between the README's `<!-- model-results:begin -->` and `<!-- model-results:end -->`
markers with a table of every row (device, versions and date from the JSON header), so the numbers
in the README are never typed by hand.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from dq_kernels.bench import model

BEGIN, END = "<!-- model-results:begin -->", "<!-- model-results:end -->"


def section(document: dict, source: str) -> str:
    header = (f"Measured on {document['device']} on {document['date']} with torch {document['torch']}, "
              f"Triton {document['triton']}, torchao {document['torchao']}, dq_kernels {document['dq_kernels']} "
              f"(`{document['command']}`; {document['timing']}). Source: `{source}`.")
    lines = [header, "", "| " + " | ".join(model.TABLE_HEADERS) + " |", "|" + "---|" * len(model.TABLE_HEADERS)]
    lines += ["| " + " | ".join(model.Row(**r).cells()) + " |" for r in document["rows"]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", help="a `dq-kernels bench model --json` file")
    parser.add_argument("--readme", default="README.md")
    args = parser.parse_args()
    document = json.loads(Path(args.json).read_text())
    readme = Path(args.readme)
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{readme} has no {BEGIN} ... {END} markers")
    body = f"{BEGIN}\n{section(document, args.json)}\n{END}"
    readme.write_text(re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: body, text, flags=re.DOTALL))
    print(f"updated {readme} from {args.json} ({len(document['rows'])} rows)")


if __name__ == "__main__":
    main()
