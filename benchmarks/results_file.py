"""What every benchmark leaves behind: results/NAME.json, the figures stamped with the machine,
the date and the command that produced them, and results/NAME.md, the same as tables."""
from __future__ import annotations

import datetime
import json
import os
import platform
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine_name() -> str:
    """Architecture, CPU model, cores and memory: the line a result names its machine by."""
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{platform.machine()}, {model}, {os.cpu_count()} cores, {memory:.0f} GiB, CPU only"


def stamp(command: str) -> dict[str, str]:
    """The machine, today's date and the command: the first fields of every result."""
    return {"machine": machine_name(), "date": datetime.date.today().isoformat(), "command": command}


def provenance(result: dict) -> str:
    """The markdown line that names a stamped result's machine, date and command."""
    return f"Machine: {result['machine']}. Date: {result['date']}. Command: `{result['command']}`."


def write_results(name: str, result: dict, markdown: list[str], directory: Path = RESULTS) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (directory / f"{name}.md").write_text("\n".join(markdown) + "\n")
