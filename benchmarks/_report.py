"""What every benchmark script prints: the machine it ran on, and Markdown tables."""

from __future__ import annotations

import os
import platform
from typing import Any


def machine(extra: str = "") -> str:
    """``nproc``, CPU model and Python version (plus ``extra``), for RESULTS.md."""
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    text = f"nproc={os.cpu_count()}, CPU={cpu}, Python {platform.python_version()}"
    return f"{text}, {extra}" if extra else text


def table(title: str, header: list[str], rows: list[list[Any]]) -> None:
    """Print a Markdown table under a ``##`` title."""
    print(f"\n## {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")


#: The help of every script's ``--smoke`` option.
SMOKE_HELP = "tiny sizes, a few seconds, figures meaningless: only proves the script runs"
