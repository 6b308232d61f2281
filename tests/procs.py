"""`python -m e2vpt ...` as real processes that start in a fraction of a second, for the fault tests.

A fault test kills a real training process (kill -9, SIGTERM), so it needs a process, but not a fresh
interpreter that imports torch, timm and e2vpt again (about 4 s each, dozens of times per suite).
The processes here are forked from a multiprocessing forkserver that imported them once: each is
a real process with its own pid (the one its run's status.json records), really killed, that runs the
same `e2vpt.cli.main` with the given arguments, working folder and environment. The forkserver only
imports; it never runs torch code, so forking it is safe.

Optionally the child dies by SIGKILL at an exact moment of its file writes (`kill_at=(FILE_NAME, N,
"before" | "after")`): before or after the N-th time a file of that name is moved into place (every
run file lands by `os.replace`), so a test places a real crash where a timer cannot, e.g. between the
two renames of a checkpoint write.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_CONTEXT = None


def _context():
    global _CONTEXT
    if _CONTEXT is None:
        if str(ROOT) not in sys.path:
            sys.path.insert(0, str(ROOT))
        _CONTEXT = multiprocessing.get_context("forkserver")
        _CONTEXT.set_forkserver_preload(["e2vpt.cli", "e2vpt.training.trainer", "e2vpt.training.build", "e2vpt.data"])
    return _CONTEXT


def _kill_at_write(name: str, nth: int, when: str) -> None:
    real_replace, seen = os.replace, {"n": 0}

    def replace(src, dst, *rest, **kwargs):
        hit = os.path.basename(os.fspath(dst)) == name and (seen.__setitem__("n", seen["n"] + 1) or seen["n"] == nth)
        if hit and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        real_replace(src, dst, *rest, **kwargs)
        if hit and when == "after":
            os.kill(os.getpid(), signal.SIGKILL)

    os.replace = replace


def _child(args: list[str], cwd: str, env: dict, out: str, err: str, kill_at) -> None:
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    for fd, path in ((1, out), (2, err)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(target, fd)
        os.close(target)
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    if kill_at:
        _kill_at_write(*kill_at)
    from e2vpt.cli import main

    code = 1
    try:
        code = main(args)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


class Proc:
    """A started e2vpt process: `pid`, `poll()`, `wait(timeout)`, `send_signal`, `kill`, and, once it
    ended, `returncode`, `stdout`, `stderr` (when captured)."""

    def __init__(self, args: list[str], cwd=None, env=None, capture: bool = False, kill_at=None) -> None:
        self._files = tempfile.TemporaryDirectory(prefix="e2vpt-proc-")
        self._out = os.path.join(self._files.name, "out") if capture else os.devnull
        self._err = os.path.join(self._files.name, "err") if capture else os.devnull
        self.args = args
        self._process = _context().Process(target=_child, args=(list(map(str, args)), str(cwd or ROOT),
                                                                dict(os.environ if env is None else env),
                                                                self._out, self._err, kill_at))
        self._process.start()
        self.pid = self._process.pid

    def poll(self) -> int | None:
        return None if self._process.is_alive() else self.returncode

    @property
    def returncode(self) -> int | None:
        code = self._process.exitcode
        return code  # negative: killed by that signal, as subprocess reports it

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self._process.is_alive():
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self._process.is_alive():
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def _read(self, path: str) -> str:
        return "" if path == os.devnull else Path(path).read_text(errors="replace") if Path(path).exists() else ""

    @property
    def stdout(self) -> str:
        return self._read(self._out)

    @property
    def stderr(self) -> str:
        return self._read(self._err)


def start(*args, **kwargs) -> Proc:
    """`python -m e2vpt ARGS` started (see `Proc`)."""
    return Proc(list(args), **kwargs)


def run(*args, timeout: float = 900, kill_at=None, cwd=None, env=None) -> subprocess.CompletedProcess:
    """`python -m e2vpt ARGS` to the end, its output captured, like `subprocess.run(..., capture_output=True)`."""
    proc = Proc(list(args), cwd=cwd, env=env, capture=True, kill_at=kill_at)
    deadline = time.monotonic() + timeout
    try:
        proc.wait(max(0.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    return subprocess.CompletedProcess(args, proc.returncode, proc.stdout, proc.stderr)
