"""A stateful OpenVINO model (state inside, as ReadValue/Assign) streamed step by step, in a child process.

The ``openvino-stateful`` variant of a bundle is OpenVINO IR (``.xml`` and ``.bin``) whose
state lives in the model: an app feeds only ``x``, reads the state with ``query_state()``
and starts a new stream with ``reset_state()``. :func:`stream` runs a list of
:class:`StatefulCall` s on one infer request and returns, after every step, the model's
outputs and every state variable by its name. It runs in a child process
(``python -m rnnexport.engines.stateful``, started to die with this one) that takes the
whole list in one message and answers once: the run is bounded by ``START_ALLOWANCE`` plus
the per-call ``timeout`` times the number of steps, and the child is killed past it.
Messages are :func:`rnnexport.engines.child.send`'s (a JSON header and raw numeric arrays,
never pickles). The model is read from the bytes given (the bundle's checked bytes), never
from a path.
"""

from __future__ import annotations

import dataclasses
import io
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import IO, Any

import numpy as np

from rnnexport.core.contract import X_NAME, Y_NAME
from rnnexport.core.errors import describe
from rnnexport.core.process import python_child_env, start_child, stop_child
from rnnexport.engines.base import START_ALLOWANCE, EngineFailure, EngineTimeout, EngineUnavailable
from rnnexport.engines.child import Ended, blocking_reader, receive, send
from rnnexport.engines.openvino import INSTALL_HINT, installed

__all__ = ["ENGINE", "RESET", "StatefulCall", "StatefulModel", "StepResult", "stream"]

#: The engine name the checks of a stateful model are reported under.
ENGINE = "openvino"


@dataclasses.dataclass(frozen=True)
class StatefulCall:
    """One request to a stateful model: ``reset_state()`` (``x`` None), or one step on ``x``.

    ``state``: values to give the state variables (by name, ``set_state``) before the step;
    None: the step goes on from the state the model holds.
    """

    x: np.ndarray | None = None
    state: Mapping[str, np.ndarray] | None = None

    @property
    def is_reset(self) -> bool:
        return self.x is None


#: A call that starts a new stream from the model's initial state.
RESET = StatefulCall()


@dataclasses.dataclass(frozen=True)
class StepResult:
    """What one step gave: the model's outputs by name, and every state variable by its name after the step."""

    outputs: dict[str, np.ndarray]
    state: dict[str, np.ndarray]


class StatefulModel:
    """The IR compiled for OpenVINO's CPU device (float32, one thread) and one infer request, in this process.

    Raises:
        EngineUnavailable: openvino is not installed, or cannot read or compile the IR.
    """

    def __init__(self, xml: bytes, weights: bytes) -> None:
        if not installed("openvino"):
            raise EngineUnavailable(ENGINE, f"the openvino package is not installed ({INSTALL_HINT})")
        import openvino

        core = openvino.Core()
        try:
            model = core.read_model(xml, openvino.Tensor(np.frombuffer(weights, np.uint8).copy()))
            # OpenVINO's CPU plugin may default to bf16: the variant is proven in float32
            self.compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                              "INFERENCE_NUM_THREADS": 1})
        except Exception as e:  # OpenVINO raises untyped errors for what it cannot read or compile
            raise EngineUnavailable(ENGINE, f"OpenVINO cannot read or compile the stateful model: {describe(e)}") from e
        self.request = self.compiled.create_infer_request()
        # an output the compiler merged with another carries both names: the contract's y wins, else the first
        self.outputs = [Y_NAME if Y_NAME in o.get_names() else next(iter(sorted(o.get_names())), "")
                        for o in self.compiled.outputs]

    def step(self, call: StatefulCall) -> StepResult | None:
        """Run ``call``: what the step gave (None for a reset)."""
        if call.is_reset:
            self.request.reset_state()
            return None
        import openvino

        if call.state is not None:
            for variable in self.request.query_state():
                if variable.name not in call.state:
                    raise EngineFailure(f"no value given for the state variable {variable.name!r}")
                variable.state = openvino.Tensor(np.ascontiguousarray(call.state[variable.name]))
        results = self.request.infer({X_NAME: call.x})
        return StepResult({name: np.array(results[self.compiled.output(name)]) for name in self.outputs if name},
                          {v.name: np.array(v.state.data) for v in self.request.query_state()})


def _run(xml: bytes, weights: bytes, calls: Sequence[StatefulCall]) -> list[StepResult]:
    model = StatefulModel(xml, weights)
    return [r for r in (model.step(call) for call in calls) if r is not None]


def _request(xml: bytes, weights: bytes, calls: Sequence[StatefulCall]) -> bytes:
    arrays: dict[str, np.ndarray] = {"xml": np.frombuffer(xml, np.uint8), "bin": np.frombuffer(weights, np.uint8)}
    plan: list[dict[str, Any]] = []
    for index, call in enumerate(calls):
        if call.x is not None:
            arrays[f"{index}.x"] = call.x
        for name, value in (call.state or {}).items():
            arrays[f"{index}.state.{name}"] = value
        plan.append({"reset": call.is_reset, "state": None if call.state is None else list(call.state)})
    buffer = io.BytesIO()
    send(buffer, {"calls": plan}, arrays)
    return buffer.getvalue()


def _calls(header: dict[str, Any], arrays: dict[str, np.ndarray]) -> list[StatefulCall]:
    calls = []
    for index, item in enumerate(header["calls"]):
        if item["reset"]:
            calls.append(RESET)
            continue
        names = item["state"]
        state = None if names is None else {str(n): arrays[f"{index}.state.{n}"] for n in names}
        calls.append(StatefulCall(arrays[f"{index}.x"], state))
    return calls


def stream(xml: bytes, weights: bytes, calls: Sequence[StatefulCall],
           timeout: float | None = None) -> list[StepResult]:
    """Run ``calls`` in order on one infer request of the IR ``xml`` + ``weights``, in a child process.

    Returns what each step gave, in order (resets give nothing).

    Raises:
        EngineUnavailable: openvino is not installed, the IR cannot be read or compiled, or no
            process could be started.
        EngineFailure: OpenVINO raised on a step, or the process ended.
        EngineTimeout: the run took longer than ``START_ALLOWANCE + timeout`` per step.
    """
    if not installed("openvino"):
        raise EngineUnavailable(ENGINE, f"the openvino package is not installed ({INSTALL_HINT})")
    steps = sum(not c.is_reset for c in calls)
    budget = None if timeout is None else START_ALLOWANCE + timeout * max(steps, 1)
    try:
        child = start_child([sys.executable, "-m", "rnnexport.engines.stateful"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=python_child_env(),
                            close_fds=True)
    except OSError as e:
        raise EngineUnavailable(ENGINE, f"cannot start a process for it: {describe(e)}") from e
    try:
        out, _ = child.communicate(_request(xml, weights, calls), timeout=budget)
    except subprocess.TimeoutExpired as e:
        raise EngineTimeout(ENGINE, timeout or 0.0, f"{steps} steps of the stateful model ({budget:g} s in all)") from e
    finally:
        stop_child(child)
    try:
        return _answer(out)
    except (Ended, ValueError, KeyError, IndexError) as e:
        raise EngineFailure(f"{ENGINE} ended while it ran the stateful model (exit code {child.returncode})") from e


def _answer(out: bytes) -> list[StepResult]:
    """The child's answer: what each step gave, or the failure or unavailability it reports."""
    header, arrays = receive(blocking_reader(io.BytesIO(out)))
    if "unavailable" in header:
        raise EngineUnavailable(ENGINE, str(header["unavailable"]))
    if "failure" in header:
        raise EngineFailure(str(header["failure"]))
    results = [StepResult({}, {}) for _ in range(int(header["steps"]))]
    for key, value in arrays.items():  # "3.outputs.y", "3.state.h"
        index, part, name = key.split(".", 2)
        found = results[int(index)]
        {"outputs": found.outputs, "state": found.state}[part][name] = value
    return results


def _serve(stdin: IO[bytes], stdout: IO[bytes]) -> None:
    header, arrays = receive(blocking_reader(stdin))
    try:
        results = _run(arrays["xml"].tobytes(), arrays["bin"].tobytes(), _calls(header, arrays))
    except EngineUnavailable as e:
        send(stdout, {"unavailable": e.reason})
        return
    except Exception as e:  # noqa: BLE001 - any error of the engine is reported as a failure
        send(stdout, {"failure": str(e) if isinstance(e, EngineFailure) else f"{ENGINE} raised {describe(e)}"})
        return
    arrays = {f"{i}.{part}.{name}": value for i, found in enumerate(results)
              for part, values in (("outputs", found.outputs), ("state", found.state)) for name, value in values.items()}
    send(stdout, {"steps": len(results)}, arrays)


def main() -> None:
    """Answer one request on the process's own stdin and stdout (stdout moved away from fd 1 first)."""
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # OpenVINO's prints (Python's or native) must not reach the answer
    sys.stdout = sys.stderr
    _serve(sys.stdin.buffer, answers)
    answers.flush()


if __name__ == "__main__":
    main()
