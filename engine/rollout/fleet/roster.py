"""runs/<name>/fleet.json: the run's rollout engines, one row each, rewritten atomically at every weight sync
and membership change so that a reader (or a person about to kill a worker by its pid) never sees half a file.

    {"engines": [{"id": 0, "kind": "worker" | "rank" | "server", "host", "device", "pid" or "url",
                  "engine": "native" | "multiturn" | "vllm", "version", "alive", ...}, ...]}
"""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path

FLEET_FILE = "fleet.json"  # in the run folder


def write_fleet_file(path: Path | None, rows: list[dict]) -> None:
    """Replace `path` with `rows`; nothing when there is no path or no run folder (a bench, a test)."""
    if path is None or not path.parent.is_dir():
        return
    # a temporary file of this thread's own: two threads dropping engines at once must not move each other's
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps({"engines": rows}, indent=2) + "\n")
    os.replace(tmp, path)
