"""devstack's child processes, and port helpers.

A ManagedProcess is one program `make run` or a test stack starts: its output goes to a log
file, it is stopped politely then firmly, it dies with devstack even when devstack is killed
outright (jobcore.parent_death), and revive() starts it again when it exits on its own.
Restarting what exits is devstack's job alone, as Compose or Kubernetes restart policies are in
production: the processes themselves exit when broken (crash-only) and never restart
themselves, and the Stack's supervisor thread calls revive().
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import pwd
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, TypeVar

from jobcore.parent_death import argv_dying_with_parent

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
# Where `ip netns add` mounts each named network namespace.
NETNS_DIR = Path("/run/netns")
_CLONE_NEWNET = 0x40000000


def netns_argv(netns: str, argv: Sequence[str], *, user: str | None = None) -> list[str]:
    """`argv` run inside the named network namespace, as `user` if given (needs root).

    nsenter enters first and drops to `user` after, since joining a namespace needs root; it
    execs the program itself, so the child's pid is the program's and signals reach it.
    """
    prefix = ["nsenter", f"--net={NETNS_DIR / netns}"]
    if user is not None:
        entry = pwd.getpwnam(user)
        prefix += [f"--setuid={entry.pw_uid}", f"--setgid={entry.pw_gid}"]
    return [*prefix, *argv]


def in_netns(netns: str | None, function: Callable[[], _T]) -> _T:
    """`function()` with its sockets in the named network namespace (None: this one).

    It runs on a thread of its own: joining a network namespace (setns) moves only the calling
    thread, so the rest of the process stays where it is.
    """
    if netns is None:
        return function()
    outcome: list[_T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            with (NETNS_DIR / netns).open("rb") as handle:
                libc = ctypes.CDLL(None, use_errno=True)
                if libc.setns(handle.fileno(), _CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns into network namespace {netns}")
            outcome.append(function())
        except BaseException as error:  # re-raised in the caller's thread
            failure.append(error)

    thread = threading.Thread(target=run, name=f"netns-{netns}")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def tcp_accepts(host: str, port: int, *, netns: str | None = None) -> bool:
    """Whether something accepts TCP connections on host:port (seen from `netns`, if given)."""

    def connect() -> bool:
        with socket.create_connection((host, port), timeout=1):
            return True

    return in_netns(netns, connect)


def port_in_use(host: str, port: int) -> bool:
    """Whether binding host:port would fail (something else has it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def wait_for(
    condition: Callable[[], bool], *, timeout_seconds: float, what: str, interval: float = 0.1
) -> None:
    """Poll `condition` until it holds; TimeoutError naming `what` otherwise."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        with contextlib.suppress(Exception):
            if condition():
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_seconds:.0f} s waiting for {what}")
        time.sleep(interval)


class ManagedProcess:
    """A named child process with its output in a log file, stopped politely then firmly.

    Between start() and stop() the process is "wanted": revive() starts it again
    if it exited on its own, as a process manager (systemd, Compose) would.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        user: str | None = None,
        stop_signal: signal.Signals = signal.SIGTERM,
        orphan_signal: signal.Signals = signal.SIGKILL,
        netns: str | None = None,
    ) -> None:
        self.name = name
        # The named network namespace the child runs in (a host of a test cluster); None: ours.
        self.netns = netns
        self.argv = list(argv)
        self.log_path = log_path
        self._env = dict(env) if env is not None else None
        self._cwd = cwd
        self._user = user
        self._stop_signal = stop_signal
        # Sent if the supervisor dies. SIGKILL by default: a graceful drain cannot finish when
        # the databases die at the same moment (a Celery warm shutdown then waits on a broker
        # that is gone), and PostgreSQL is the source of truth, so leases recover the jobs.
        self._orphan_signal = orphan_signal
        self._popen: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._wanted = False
        self._started_at = 0.0
        # The exit status of each run that revive() replaced, oldest first: what a process
        # manager's restart history shows, and what tests read to see a crash happen.
        self.revived_exits: list[int] = []
        # start/stop/revive may be called from the supervisor thread and the main thread.
        self._lock = threading.RLock()

    @property
    def pid(self) -> int | None:
        """The running child's pid."""
        return self._popen.pid if self._popen is not None else None

    def start(self) -> None:
        """Launch the child (its own session, so a terminal's Ctrl-C reaches only the supervisor)."""
        with self._lock:
            self._wanted = True
            self._spawn()

    def _spawn(self) -> None:
        self._close_log()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self._started_at = time.monotonic()
        argv = argv_dying_with_parent(self.argv, self._orphan_signal)
        user = self._user
        if self.netns is not None:
            argv, user = netns_argv(self.netns, argv, user=user), None
        self._popen = subprocess.Popen(
            argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self._env,
            cwd=self._cwd,
            user=user,
            start_new_session=True,
        )

    def is_running(self) -> bool:
        """Whether the child has been started and has not exited."""
        return self._popen is not None and self._popen.poll() is None

    def exit_code(self) -> int | None:
        """The child's exit status once it has exited."""
        return self._popen.poll() if self._popen is not None else None

    def log_tail(self, lines: int = 30) -> str:
        """The end of the child's log, for error messages."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def send(self, signum: signal.Signals) -> None:
        """Deliver a signal to the child (tests use SIGKILL to simulate crashes)."""
        if self._popen is not None and self._popen.poll() is None:
            self._popen.send_signal(signum)

    def revive(self, *, min_uptime_seconds: float = 2.0) -> bool:
        """Start the child again if it is wanted but exited; True if it did.

        A child that keeps dying is restarted at most every `min_uptime_seconds`.
        """
        with self._lock:
            if not self._wanted or self._popen is None or self._popen.poll() is None:
                return False
            if time.monotonic() - self._started_at < min_uptime_seconds:
                return False
            logger.warning(
                "%s exited with status %s; restarting it", self.name, self._popen.returncode
            )
            self.revived_exits.append(self._popen.returncode)
            self._spawn()
            return True

    def stop(self, *, timeout_seconds: float = 15) -> None:
        """Ask the child to stop, wait for it to drain, kill it if it will not."""
        with self._lock:
            self._wanted = False
            self._terminate(timeout_seconds)

    def _terminate(self, timeout_seconds: float) -> None:
        popen = self._popen
        if popen is not None and popen.poll() is None:
            popen.send_signal(self._stop_signal)
            try:
                popen.wait(timeout_seconds)
            except subprocess.TimeoutExpired:
                logger.warning(
                    "%s did not stop within %.0f s; killing it", self.name, timeout_seconds
                )
                popen.kill()
                popen.wait()
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def python_module(module: str, *args: str) -> list[str]:
    """argv that runs `python -m module` with this interpreter."""
    return [sys.executable, "-m", module, *args]


def child_env(extra: Mapping[str, str]) -> dict[str, str]:
    """The current environment plus `extra` (children inherit PATH, PYTHONPATH, ...)."""
    return {**os.environ, **extra}
