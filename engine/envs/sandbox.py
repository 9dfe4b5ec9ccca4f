"""Python in a limited subprocess: a code-execution tool, and a unit-test reward for generated code.

Each run gets a fresh temporary folder as its working directory and a new interpreter (`python -I`, no user
site, no environment variables but a minimal PATH) that, before running the code, sets resource limits and
installs an audit hook (PEP 578):

    limit                      how                                  a violation ends as
    wall time                  parent kills the process group      status "timeout"
    CPU time                   RLIMIT_CPU                           status "timeout" (SIGXCPU)
    memory                     RLIMIT_AS                            status "memory" (MemoryError)
    output / file size         RLIMIT_FSIZE on stdout/stderr files  status "output_limit" (EFBIG)
    open files                 RLIMIT_NOFILE                        status "error"
    processes                  audit hook: fork, exec, spawn, subprocess, os.system refused   "error"
    network                    audit hook: socket creation refused  status "error"
    writes outside its folder  audit hook: open-for-write, remove, rename, mkdir, chmod... refused  "error"
    native code                audit hook: importing ctypes refused status "error"

The process leads its own session, and the parent kills the whole process group with SIGKILL when the run
ends, whatever happened. What this does NOT protect against (docs/environments.md): reads anywhere the user
can read (the code can read the host's files), CPU and memory pressure up to the limits, a C extension already
importable that bypasses audit hooks, or a kernel exploit. The audit hook is a guard against the mistakes and
habits of generated code, not a security boundary; run untrusted code from outside the lab in a container or
VM with no network as well.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from engine.envs.tools import Tool


@dataclass(frozen=True, slots=True)
class SandboxLimits:
    wall_s: float = 5.0
    cpu_s: int = 5
    memory_mb: int = 512  # address space: the interpreter itself takes ~30 MB of it
    output_bytes: int = 64_000  # per stream, and per file the code writes
    max_output_chars: int = 2_000  # what the result keeps of each stream (the tail)


@dataclass(frozen=True, slots=True)
class SandboxResult:
    status: str  # ok | error | timeout | memory | output_limit | killed
    exit_code: int
    stdout: str
    stderr: str
    elapsed_s: float

    @property
    def ok(self) -> bool:
        return self.status == "ok"


# Runs inside the child before the user's code; argv: memory bytes, cpu s, file bytes.
_BOOTSTRAP = r'''
import os, resource, sys
mem, cpu, fsize = (int(a) for a in sys.argv[1:4])
resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
resource.setrlimit(resource.RLIMIT_NOFILE, (32, 32))
ROOT = os.path.realpath(os.getcwd()) + os.sep
REFUSED = {"os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.exec", "os.system", "os.kill",
           "os.killpg", "subprocess.Popen", "socket.__new__", "socket.connect", "socket.bind",
           "socket.getaddrinfo", "ctypes.dlopen", "pty.spawn"}
PATHS = {"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.truncate",
         "os.symlink", "os.link", "os.utime", "shutil.rmtree", "shutil.move", "shutil.copyfile"}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
def inside(path):
    if isinstance(path, int):
        return True
    path = os.fsdecode(path)
    return (os.path.realpath(path) + os.sep).startswith(ROOT)
def hook(event, args):
    if event in REFUSED:
        raise PermissionError(f"sandbox: {event} is not allowed")
    if event == "import" and args[0] in ("ctypes", "_ctypes"):
        raise PermissionError("sandbox: ctypes is not allowed")
    if event == "open":
        path, mode, flags = args
        writing = any(c in (mode or "") for c in "wax+") or bool((flags or 0) & WRITE_FLAGS)
        if writing and not inside(path):
            raise PermissionError(f"sandbox: writing outside the sandbox folder ({path})")
    if event in PATHS and not all(inside(a) for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))):
        raise PermissionError(f"sandbox: {event} outside the sandbox folder")
sys.addaudithook(hook)
sys.argv = ["main.py"]
with open("main.py") as f:
    source = f.read()
exec(compile(source, "main.py", "exec"), {"__name__": "__main__"})
'''


def run_python(code: str, limits: SandboxLimits = SandboxLimits()) -> SandboxResult:
    """Run `code` as a script in a fresh sandbox; never raises for anything the code does."""
    base = Path(tempfile.mkdtemp(prefix="cadence-sandbox-"))
    try:
        work = base / "work"
        work.mkdir()
        (work / "main.py").write_text(code)
        return _run(base, work, limits)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _run(base: Path, work: Path, limits: SandboxLimits) -> SandboxResult:
    argv = [sys.executable, "-I", "-c", _BOOTSTRAP,
            str(limits.memory_mb << 20), str(limits.cpu_s), str(limits.output_bytes)]
    start = time.monotonic()
    with open(base / "stdout", "wb") as out, open(base / "stderr", "wb") as err:
        proc = subprocess.Popen(argv, cwd=work, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                env={"PATH": "/usr/bin:/bin"}, start_new_session=True)
        timed_out = False
        try:
            proc.wait(timeout=limits.wall_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            _kill_group(proc)
    stdout, stderr = (_tail(base / name, limits.max_output_chars) for name in ("stdout", "stderr"))
    status = "timeout" if timed_out else _status(proc.returncode, stderr)
    return SandboxResult(status, proc.returncode, stdout, stderr, time.monotonic() - start)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the child leads its group: this reaches anything it started
    except ProcessLookupError:
        pass
    proc.wait()


def _status(returncode: int, stderr: str) -> str:
    if returncode == 0:
        return "ok"
    if returncode == -signal.SIGXCPU:
        return "timeout"
    if returncode == -signal.SIGXFSZ:
        return "output_limit"
    if returncode < 0:
        return "killed"
    if "MemoryError" in stderr:
        return "memory"
    # Python ignores SIGXFSZ: a write past RLIMIT_FSIZE raises OSError(EFBIG) instead
    return "output_limit" if "File too large" in stderr else "error"


def _tail(path: Path, chars: int) -> str:
    text = path.read_bytes().decode("utf-8", errors="replace")
    return text[-chars:]


def python_tool(limits: SandboxLimits = SandboxLimits()) -> Tool:
    """The sandbox as a tool: the result is the script's stdout; a failed run raises, so the environment
    counts it as a tool error and the policy reads why."""

    def run(code: str) -> str:
        result = run_python(code, limits)
        if not result.ok:
            raise RuntimeError(f"{result.status}: {result.stderr.strip()[-500:]}")
        return result.stdout

    return Tool(name="python", fn=run, description="Run a Python script and return what it prints.",
                parameters={"type": "object", "properties": {"code": {"type": "string"}}, "required": ["code"]})
