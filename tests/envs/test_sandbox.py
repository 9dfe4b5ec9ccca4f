"""The sandbox's limits: each kind of misbehaviour ends as a failed call within its limit, and the caller goes on."""
import os
import time

import pytest

from engine.envs.sandbox import SandboxLimits, python_tool, run_python
from engine.envs.tools import ToolEnvironment

LIMITS = SandboxLimits(wall_s=3.0, cpu_s=2, memory_mb=256, output_bytes=10_000)
# the interpreter's start-up on a busy 2-core machine is part of every run's wall time
SLACK_S = 10.0


def test_clean_script_returns_its_output():
    result = run_python("print(sum(range(10)))", LIMITS)
    assert result.ok and result.stdout.strip() == "45"


def test_infinite_loop_is_killed_at_the_time_limit():
    start = time.monotonic()
    result = run_python("while True:\n    pass\n", LIMITS)
    assert result.status == "timeout"
    assert time.monotonic() - start < LIMITS.wall_s + SLACK_S


def test_sleeping_script_is_killed_at_the_wall_limit():
    result = run_python("import time\ntime.sleep(60)\n", SandboxLimits(wall_s=1.0))
    assert result.status == "timeout" and result.elapsed_s < 1.0 + SLACK_S


def test_fork_bomb_is_refused():
    result = run_python("import os\nwhile True:\n    os.fork()\n", LIMITS)
    assert result.status == "error" and "os.fork is not allowed" in result.stderr


def test_subprocess_is_refused():
    result = run_python("import subprocess\nsubprocess.run(['sh', '-c', 'echo hi'])\n", LIMITS)
    assert result.status == "error" and "not allowed" in result.stderr


def test_memory_hog_fails_with_memory_status():
    result = run_python("x = bytearray(2 * 1024 ** 3)\n", LIMITS)
    assert result.status == "memory"


def test_write_outside_the_folder_is_refused(tmp_path):
    target = tmp_path / "escaped.txt"
    result = run_python(f"open({str(target)!r}, 'w').write('x')\n", LIMITS)
    assert result.status == "error" and "outside the sandbox folder" in result.stderr
    assert not target.exists()


def test_remove_outside_the_folder_is_refused(tmp_path):
    target = tmp_path / "keep.txt"
    target.write_text("keep")
    result = run_python(f"import os\nos.remove({str(target)!r})\n", LIMITS)
    assert result.status == "error" and target.exists()


def test_write_inside_the_folder_is_allowed():
    result = run_python("open('out.txt', 'w').write('x')\nprint(open('out.txt').read())\n", LIMITS)
    assert result.ok and result.stdout.strip() == "x"


def test_network_call_is_refused():
    code = "import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)\n"
    result = run_python(code, LIMITS)
    assert result.status == "error" and "socket" in result.stderr


def test_ctypes_is_refused():
    result = run_python("import ctypes\n", LIMITS)
    assert result.status == "error" and "ctypes is not allowed" in result.stderr


def test_flood_of_output_stops_at_the_output_limit():
    result = run_python("while True:\n    print('x' * 1000)\n", LIMITS)
    assert result.status == "output_limit"
    assert len(result.stdout) <= LIMITS.max_output_chars


def test_environment_variables_do_not_leak(monkeypatch):
    monkeypatch.setenv("CADENCE_SECRET", "s3cret")
    result = run_python("import os\nprint(os.environ.get('CADENCE_SECRET'))\n", LIMITS)
    assert result.stdout.strip() == "None"


def test_failed_tool_call_is_an_observation_and_the_episode_goes_on():
    env = ToolEnvironment([python_tool(LIMITS)])
    turn = '<tool_call>{"name": "python", "arguments": {"code": "import os\\nos.fork()"}}</tool_call>'
    obs = env.step(turn)
    assert obs.tool_calls == 1 and obs.tool_errors == 1 and "not allowed" in obs.text
    obs = env.step('<tool_call>{"name": "python", "arguments": {"code": "print(6 * 7)"}}</tool_call>')
    assert obs.tool_errors == 0 and obs.text.strip() == "42"


def test_no_process_survives_a_run():
    code = "import time\ntime.sleep(30)\n"
    before = _children()
    run_python(code, SandboxLimits(wall_s=0.5))
    assert _children() <= before


def _children() -> set[int]:
    path = f"/proc/{os.getpid()}/task/{os.getpid()}/children"
    if not os.path.exists(path):
        pytest.skip("no /proc children list on this system")
    return {int(p) for p in open(path).read().split()}
