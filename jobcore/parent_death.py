"""Child processes that end with their parent: the one place that sets Linux's parent-death signal.

A supervisor that is killed outright (SIGKILL, an OOM kill) cannot stop its children, and a
child left behind keeps its port and its work. The kernel can signal a child when its parent
dies (prctl PR_SET_PDEATHSIG), but only the child can ask for that, for itself, so there are
two ways in: a Python child we start calls `run_dying_with_parent`; any other program is
started through `argv_dying_with_parent`, whose setpriv (util-linux) asks before it execs the
program. subprocess's preexec_fn could do the same but is unsafe in a process with threads
(a forked child can deadlock before exec).

Used by the two supervisors that start processes: devstack (everything `make run` and the
tests start) and server/__main__ (the SERVER_PROCESSES server processes). Elsewhere than
Linux nothing is set.
"""

from __future__ import annotations

import ctypes
import shutil
import signal
import sys
from collections.abc import Callable, Sequence

_PR_SET_PDEATHSIG = 1
_SETPRIV = shutil.which("setpriv")


def die_with_parent(signum: signal.Signals) -> None:
    """Have the kernel send `signum` to this process when its parent dies."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signum)


def run_dying_with_parent(
    signum: signal.Signals, target: Callable[..., object], *args: object
) -> None:
    """Run `target(*args)` in this process after `die_with_parent(signum)`.

    A multiprocessing target: the child sets its signal before anything else runs.
    """
    die_with_parent(signum)
    target(*args)


def argv_dying_with_parent(argv: Sequence[str], signum: signal.Signals) -> list[str]:
    """`argv` run so that the started program gets `signum` when its parent dies."""
    if _SETPRIV is None or sys.platform != "linux":
        return list(argv)
    return [_SETPRIV, "--pdeathsig", signum.name.removeprefix("SIG"), "--", *argv]
