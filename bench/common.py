"""What every benchmark records next to its numbers: the machine, the software and the run's
provenance (the full argument list, the commit, whether the tree was dirty, the date).
bench/index.py reads these keys for bench/README.md's index table."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
    except OSError:
        return None
    return done.stdout if done.returncode == 0 else None


def provenance(argv: list[str] | None = None) -> dict:
    """The run's argument list, commit, dirty flag and date. `argv`: the list main() parsed when
    it was called from Python rather than from the command line (sys.argv's otherwise)."""
    full = _git("rev-parse", "HEAD")
    # results are written by the run itself: only other changes make the measured code differ
    status = _git("status", "--porcelain", "--", ".", ":(exclude)bench/results")
    dirty = None if status is None else [line[3:] for line in status.splitlines()]
    return {"argv": list(sys.argv) if argv is None else [sys.argv[0], *argv],
            "git_commit_full": full.strip() if full else None,
            "git_dirty": None if dirty is None else bool(dirty),
            "git_dirty_paths": None if dirty is None else dirty[:20],
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def machine(argv: list[str] | None = None) -> dict:
    import torch
    import transformers

    cpu = platform.processor()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    commit = _git("rev-parse", "--short", "HEAD")
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__,
            "git_commit": commit.strip() if commit else None,
            "load_average_1m": round(os.getloadavg()[0], 2),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            **provenance(argv)}
