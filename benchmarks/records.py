"""A benchmark's record: what it measured, with the command that made it, the commit it ran at and the machine."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from vitcompress.bench import hardware, versions

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = RESULTS.parent.parent


def commit() -> dict[str, Any]:
    """The commit the tree is at, and whether tracked files other than the results and the Markdown texts differ from
    it (a record made by changed code cannot be reproduced from the commit)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()

    changed = [line for line in git("status", "--porcelain", "--untracked-files=no").splitlines()
               if not line[3:].startswith("benchmarks/results/") and not line.endswith(".md")]
    return {"commit": git("rev-parse", "HEAD") or None, "tree_clean": not changed}


AT_START = commit()  # what ran is the code as it was when the benchmark started, not when it ended


def write_record(name: str, payload: dict[str, Any]) -> Path:
    """``benchmarks/results/NAME.json``: ``payload`` with the command, the commit, the date and the hardware."""
    argv = [str(Path(sys.argv[0]).resolve().relative_to(ROOT)) if Path(sys.argv[0]).resolve().is_relative_to(ROOT)
            else sys.argv[0], *sys.argv[1:]]
    record = {"benchmark": Path(sys.argv[0]).stem, "command": "python " + shlex.join(argv), **AT_START,
              "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "hardware": hardware(), "versions": versions(), **payload}
    out = RESULTS / f"{name}.json"
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(out)
    return out
