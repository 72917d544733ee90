"""Write one script's section of benchmarks/RESULTS.md, between its own markers, leaving the others alone."""

from __future__ import annotations

import re
from pathlib import Path

from edgepack_runtime.cpu import describe as cpu_description  # re-exported for the scripts

__all__ = ["cpu_description", "mean_range", "write_section"]
RESULTS = Path(__file__).with_name("RESULTS.md")
HEADER = "# Measured results\n\nEach section is written by the script it names, from a run of this code.\n"


def write_section(name: str, markdown: str, path: Path = RESULTS) -> None:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{markdown.strip()}\n{end}"
    text = path.read_text() if path.exists() else HEADER
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    text = (
        pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    )
    path.write_text(text)


def mean_range(mean: float, low: float, high: float, fmt: str = "{:.4f}", spread: bool = True) -> str:
    """A table cell over several runs: the mean, then (min-max) when `spread`."""
    cell = fmt.format(mean)
    return f"{cell} ({fmt.format(low)}-{fmt.format(high)})" if spread else cell
