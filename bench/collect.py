"""Gather every benchmark's results file into bench/results.json, with the machine.

`make bench` runs each script (each also writes bench/results-<name>.json on
its own) and then this.
"""

from __future__ import annotations

import json
import os
import platform
from datetime import UTC, datetime
from pathlib import Path

BENCH = Path(__file__).resolve().parent


def machine() -> dict[str, object]:
    memory = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) // 1024 // 1024} GB"
    except OSError:
        pass
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "memory": memory,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def main() -> None:
    results = {
        path.stem.removeprefix("results-"): json.loads(path.read_text())
        for path in sorted(BENCH.glob("results-*.json"))
        if path.stem != "results-compare"  # two commits side by side: not this one's
    }
    out = BENCH / "results.json"
    out.write_text(
        json.dumps(
            {
                "collected_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": machine(),
                "benchmarks": results,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {out} ({', '.join(results)})")


if __name__ == "__main__":
    main()
