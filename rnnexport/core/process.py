"""Child processes that die with the command that started them.

Every process rnnexport starts (an engine's process: node, Chromium, a Python worker for
the ReferenceEvaluator, OpenVINO or tract; onnxruntime's ORT-format converter) goes through
:func:`start_child`. On Linux the child asks the kernel for ``SIGKILL`` when its parent
ends (``PR_SET_PDEATHSIG``), so a killed command (``kill -9``, out of memory) leaves no
engine running; :func:`stop_child` kills and reaps one that is no longer needed.

The signal is tied to the thread that started the child: start a child from the thread
that will wait for it (a runner is started and used by the same thread). Torch-free
(standard library only).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["package_root", "python_child_env", "start_child", "stop_child"]

#: prctl's option that sets the signal a process gets when its parent ends.
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> Callable[[], None] | None:
    """The function a child runs before ``exec`` to die with this process; None where Linux's prctl is missing.

    The C function is looked up here, in the parent: the child only calls it (nothing is
    imported or allocated between fork and exec).
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def in_child() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent ended before the request took effect
            os._exit(1)

    return in_child


def start_child(args: Sequence[str], **options: Any) -> subprocess.Popen[Any]:
    """``subprocess.Popen(args, **options)`` for a child that is killed when this process ends.

    Raises:
        OSError: the program cannot be started.
    """
    return subprocess.Popen(list(args), preexec_fn=_die_with_parent(), **options)


def stop_child(process: subprocess.Popen[Any] | None) -> None:
    """Kill ``process`` (if it still runs), reap it and close its pipes."""
    if process is None:
        return
    with contextlib.suppress(OSError):
        process.kill()
    process.wait()
    for stream in (process.stdin, process.stdout, process.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


def package_root() -> Path:
    """The folder that holds the ``rnnexport`` package this process runs."""
    return Path(__file__).resolve().parent.parent.parent


def python_child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a Python child that must import this same rnnexport (its folder first on PYTHONPATH)."""
    env = {**os.environ, **(extra or {})}
    paths = [str(package_root()), *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env
