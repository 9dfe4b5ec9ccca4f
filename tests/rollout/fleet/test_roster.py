"""fleet.json (engine/rollout/fleet/roster.py): written whole, also by several threads at once."""
from __future__ import annotations

import json
import threading

from engine.rollout.fleet.roster import write_fleet_file


def test_threads_writing_at_once_each_replace_the_whole_file(tmp_path):
    # request threads of two failing servers drop them at the same moment: a shared temporary name made one
    # thread's os.replace find the file gone, and the exception lost the prompt that thread held
    path, errors, start = tmp_path / "fleet.json", [], threading.Barrier(8)

    def write(i: int) -> None:
        start.wait()
        try:
            for _ in range(50):
                write_fleet_file(path, [{"id": i}])
        except Exception as exc:  # noqa: BLE001 (collected for the assertion)
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert json.loads(path.read_text())["engines"][0]["id"] in range(8)
    assert [p.name for p in tmp_path.iterdir()] == ["fleet.json"]  # no temporary file left behind


def test_no_run_folder_writes_nothing(tmp_path):
    write_fleet_file(tmp_path / "missing" / "fleet.json", [{"id": 0}])
    write_fleet_file(None, [{"id": 0}])
    assert not (tmp_path / "missing").exists()
