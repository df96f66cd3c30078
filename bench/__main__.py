"""``python -m bench``: run every benchmark and print its figures.

.venv/bin/python -m bench                 # all, about seven minutes on 2 CPUs
.venv/bin/python -m bench --quick         # smaller and shorter, for a smoke run
.venv/bin/python -m bench --only ack,scale --json results.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import ack, approval, expiry, scale
from bench.stats import machine

BENCHMARKS: dict[str, Callable[[Path, bool, str | None], dict[str, Any]]] = {
    "ack": ack.run,
    "approval": approval.run,
    "expiry": expiry.run,
    "scale": scale.run,
}
TITLES = {
    "ack": "Slash-command ack latency, jitbot against a bare Bolt app (100 req/s)",
    "approval": "Approval click to granted, against the raw azure-mgmt-network call",
    "expiry": "Expiry precision with many live grants",
    "scale": "Planner on large NSGs; restart with many live grants",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller loads, for a smoke run")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--workdir", type=Path, help="keep databases and logs here")
    parser.add_argument(
        "--database-url", help="database of the ack and approval runs (default: SQLite)"
    )
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(BENCHMARKS)
    unknown = set(names) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark(s) {sorted(unknown)}; choose from {list(BENCHMARKS)}")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="jitbot-bench-"))
    _log_to(workdir / "bench.log")
    print(f"machine: {machine()}")
    print(f"work directory and logs: {workdir}\n", flush=True)
    results: dict[str, Any] = {"machine": machine(), "quick": args.quick}
    for name in names:
        print(f"## {TITLES[name]}\n", flush=True)
        started = time.monotonic()
        results[name] = BENCHMARKS[name](workdir / name, args.quick, args.database_url)
        print(f"\n({name}: {time.monotonic() - started:.0f} s)\n", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
    return 0


def _log_to(path: Path) -> None:
    """The bot's own logs go to a file, so the figures stay readable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    logging.getLogger("azure").setLevel(logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)


if __name__ == "__main__":
    sys.exit(main())
