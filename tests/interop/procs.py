"""Child processes of the conformance suite: start, wait for the readiness line, stop.

Every child runs in its own process group and gets SIGTERM when pytest dies
(PR_SET_PDEATHSIG), so an interrupted run leaves nothing listening. Output (stdout and
stderr merged) is copied line by line to a log file that the tests and the Prism
violation scanner read.
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def free_port() -> int:
    """A loopback port that was free a moment ago (for tools that cannot take port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StartError(RuntimeError):
    pass


class Proc:
    """A child process whose merged output goes to `log_path`.

    `ready` is a regex searched in each output line; its first group is the value
    returned by `start()` (for example the URL of a `listening on` line).
    """

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict | None = None):
        self.name = name
        self.argv = [str(a) for a in argv]
        self.log_path = Path(log_path)
        self.env = env
        self.popen: subprocess.Popen | None = None
        self._lines: list[str] = []
        self._cond = threading.Condition()
        self._eof = False
        self._reader: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------

    def start(self, ready: str, timeout: float = 60.0) -> str:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        if self.env:
            env.update(self.env)
        self.popen = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        self._reader = threading.Thread(target=self._pump, name=f"log-{self.name}", daemon=True)
        self._reader.start()
        rx = re.compile(ready)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for line in self._lines[seen:]:
                    m = rx.search(line)
                    if m:
                        return m.group(1) if m.groups() else line
                seen = len(self._lines)
                if self._eof or self.popen.poll() is not None:
                    raise StartError(
                        f"{self.name} exited (code {self.popen.poll()}) before printing /{ready}/;"
                        f" argv={self.argv}\n--- output ---\n{self.tail()}"
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    self.stop()
                    raise StartError(
                        f"{self.name} printed no /{ready}/ within {timeout:.0f}s; argv={self.argv}"
                        f"\n--- output ---\n{self.tail()}"
                    )
                self._cond.wait(min(left, 0.2))

    def _pump(self) -> None:
        assert self.popen and self.popen.stdout
        with open(self.log_path, "a", encoding="utf-8", errors="replace") as log:
            for raw in self.popen.stdout:
                line = raw.decode("utf-8", errors="replace")
                log.write(line)
                log.flush()
                with self._cond:
                    self._lines.append(line.rstrip("\n"))
                    self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, grace: float = 5.0) -> int | None:
        p = self.popen
        if p is None:
            return None
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(5)
        if self._reader:
            self._reader.join(2)
        return p.returncode

    # -- output ----------------------------------------------------------------------

    def lines(self) -> list[str]:
        with self._cond:
            return list(self._lines)

    def wait_for_line(self, pattern: str, start: int = 0, timeout: float = 10.0) -> str | None:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = start
        with self._cond:
            while True:
                for line in self._lines[seen:]:
                    if rx.search(line):
                        return line
                seen = len(self._lines)
                left = deadline - time.monotonic()
                if left <= 0 or self._eof:
                    return None
                self._cond.wait(min(left, 0.2))

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.lines()[-n:])
