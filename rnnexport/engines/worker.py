"""The child side of :class:`~rnnexport.engines.child.ChildRunner`: graphs under numbers, calls until stopped.

``python -m rnnexport.engines.worker`` answers a ``start`` message (a number, an engine kind,
and the graph's path or bytes) with the graph's inputs and outputs (or why the engine cannot
run it), each ``infer`` message (a number and the feeds) with the outputs, a failure, or why
the engine cannot run that input; a ``stop`` message drops a graph. It ends when its stdin
closes. Whatever an engine prints goes to stderr (which the parent discards), never into the
answers.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable
from typing import IO, Any

from rnnexport.core.errors import describe
from rnnexport.engines.base import EngineFailure, EngineKind, EngineUnavailable, GraphTensor, Runner
from rnnexport.engines.child import Ended, blocking_reader, local_class, receive, send

__all__ = ["main"]


def _tensors(tensors: tuple[GraphTensor, ...]) -> list[dict[str, Any]]:
    return [{"name": t.name, "dtype": t.dtype, "shape": None if t.shape is None else list(t.shape)} for t in tensors]


def _caught(records: list[warnings.WarningMessage]) -> list[tuple[str, str]]:
    return list(dict.fromkeys((w.category.__name__, str(w.message)) for w in records))


def _start(header: dict[str, Any], arrays: dict[str, Any]) -> Runner:
    path = header.get("path")
    model = path if isinstance(path, str) else arrays["model"].tobytes()
    make: Callable[[Any], Runner] = local_class(EngineKind(header["kind"]))  # each takes the graph
    return make(model)


def _answer(runner: Runner, arrays: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        return {}, runner.infer(arrays)
    except EngineUnavailable as e:
        return {"unavailable": e.reason}, {}
    except EngineFailure as e:
        return {"failure": str(e)}, {}
    except Exception as e:  # noqa: BLE001 - any error of the engine is reported, the worker lives on
        return {"failure": f"{runner.name} raised {describe(e)}"}, {}


def _load(runners: dict[int, Runner], header: dict[str, Any], arrays: dict[str, Any]) -> dict[str, Any]:
    """Start the graph of a ``start`` message under its number: its inputs and outputs, or why not."""
    runner = _start(header, arrays)
    try:
        runner.activate()
    except EngineUnavailable as e:
        return {"unavailable": e.reason}
    except Exception as e:  # noqa: BLE001 - an engine that fails to start is unavailable, with the reason
        return {"unavailable": f"did not start: {describe(e)}"}
    runners[int(header["id"])] = runner
    return {"inputs": _tensors(runner.inputs), "outputs": _tensors(runner.outputs), "detail": runner.detail}


def serve(stdin: IO[bytes], stdout: IO[bytes]) -> None:
    """Answer ``start`` and ``infer`` messages from ``stdin`` on ``stdout`` (``stop`` has no answer) until
    ``stdin`` closes."""
    read = blocking_reader(stdin)
    runners: dict[int, Runner] = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        while True:
            del caught[:]
            try:
                header, arrays = receive(read)
            except Ended:
                return
            op = header.get("op")
            if op == "stop":
                runner = runners.pop(int(header["id"]), None)
                if runner is not None:
                    runner.deactivate()
                continue
            outputs: dict[str, Any] = {}
            if op == "start":
                answer = _load(runners, header, arrays)
            elif int(header.get("id", -1)) in runners:
                answer, outputs = _answer(runners[int(header["id"])], arrays)
            else:
                answer = {"failure": f"no graph number {header.get('id')!r} in this worker"}
            send(stdout, {**answer, "warnings": _caught(caught)}, outputs)


def main() -> None:
    """Serve the parent on the process's own stdin and stdout (stdout moved away from fd 1 first)."""
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # an engine's prints (Python's or native) must not reach the answers
    sys.stdout = sys.stderr
    serve(sys.stdin.buffer, answers)


if __name__ == "__main__":
    main()
