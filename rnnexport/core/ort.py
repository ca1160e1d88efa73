"""The one onnxruntime adapter: provider names, resolution, and session start with fallback detection.

onnxruntime quietly falls back to the CPU provider when the one asked for cannot
start (and onnxruntime-gpu lists CUDA and TensorRT as available even on machines
without a GPU). :func:`start_session` checks ``session.get_providers()`` after
creating the session: a session on which a requested provider is not active fell
back, and it raises :class:`~rnnexport.core.errors.ProviderError` with the reason
onnxruntime logged, instead of running on the wrong device. It changes no global
onnxruntime setting. Torch-free.

:func:`time_limit` bounds one call in time: a watchdog thread sets the call's
``RunOptions.terminate`` once its budget is spent, and onnxruntime ends the call (it
checks the flag before each node and each iteration of a Loop or Scan), so a graph that
would loop without end cannot hang the process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
import io
import itertools
import math
import os
import re
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import onnxruntime as ort

from rnnexport.core.errors import (
    BundleError,
    ContractError,
    ProviderError,
    RnnexportError,
    RunError,
    RunTimeout,
    describe,
)
from rnnexport.core.external import ExternalModel

__all__ = [
    "ALIASES",
    "CPU",
    "Device",
    "LoadError",
    "MAX_TIMEOUT",
    "ProviderRequest",
    "Started",
    "TimeLimit",
    "available_providers",
    "check_timeout",
    "full_name",
    "resolve_providers",
    "run_limited",
    "short_name",
    "start_session",
    "stopped",
    "time_limit",
]

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"

#: Short names accepted everywhere a provider is named (CLI, runtime, verify).
ALIASES = {"cpu": CPU, "cuda": CUDA, "tensorrt": TENSORRT, "trt": TENSORRT}

#: Providers whose tensors live in CUDA device memory.
_CUDA_PROVIDERS = (CUDA, TENSORRT)

ProviderRequest = str | tuple[str, dict[str, Any]]

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_LIBRARY = re.compile(r"/\S*/(lib[^/\s]+\.so[.\d]*)")


class LoadError(BundleError):
    """onnxruntime cannot load a model file (not ONNX, unsupported IR or operator)."""


@dataclasses.dataclass(frozen=True)
class Device:
    """Where a session's tensors live: ``cpu``, or ``cuda`` and its id."""

    type: str = "cpu"
    id: int = 0

    def __str__(self) -> str:
        return self.type if self.type == "cpu" else f"{self.type}:{self.id}"


@dataclasses.dataclass(frozen=True)
class Started:
    """A session on which every requested provider is active."""

    session: ort.InferenceSession
    device: Device
    providers: tuple[str, ...]


def available_providers() -> list[str]:
    """What this onnxruntime build lists, in its preference order (not all of them may start)."""
    return list(ort.get_available_providers())


def short_name(provider: str) -> str:
    """``"CUDAExecutionProvider"`` -> ``"cuda"``."""
    for short, full in ALIASES.items():
        if full == provider:
            return short
    return provider.removesuffix("ExecutionProvider").lower()


def full_name(name: str) -> str:
    """The full provider name for a short name (``cpu``, ``cuda``, ``tensorrt``, ``trt``) or a full one.

    Raises:
        ProviderError: a name onnxruntime does not know, listing the valid ones.
    """
    key = name.strip() if isinstance(name, str) else name
    if isinstance(key, str) and key.lower() in ALIASES:
        return ALIASES[key.lower()]
    for full in ort.get_all_providers():
        if key in (full, short_name(full)):
            return full
    raise ProviderError(f"unknown execution provider {name!r}; valid names: {', '.join(ALIASES)} or a full "
                        f"onnxruntime name (this build lists {', '.join(available_providers())})")


def _name(request: ProviderRequest) -> str:
    return request[0] if isinstance(request, tuple) else request


def resolve_providers(providers: ProviderRequest | Sequence[ProviderRequest] | None) -> list[ProviderRequest]:
    """Full provider names (aliases expanded, duplicates dropped), each listed by this build.

    Args:
        providers: None (CPU), one provider, or a list in priority order; each a
            name (``"cuda"`` or ``"CUDAExecutionProvider"``) or ``(name, options)``.

    Raises:
        ProviderError: a malformed request, an unknown name, or one this build lacks.
    """
    if providers is None:
        return [CPU]
    if isinstance(providers, str) or (isinstance(providers, tuple) and len(providers) == 2
                                      and isinstance(providers[1], dict)):
        providers = [providers]
    available = available_providers()
    resolved: list[ProviderRequest] = []
    for request in providers:
        name = _name(request)
        if not isinstance(name, str) or (isinstance(request, tuple) and not isinstance(request[1], dict)):
            raise ProviderError(f"a provider is a name or (name, options dict), got {request!r}")
        full = full_name(name)
        if full not in available:
            raise ProviderError(f"execution provider {name!r} is not available in this onnxruntime "
                                f"build (available: {', '.join(available)})")
        if full not in [_name(r) for r in resolved]:
            resolved.append((full, request[1]) if isinstance(request, tuple) else full)
    if not resolved:
        raise ProviderError(f"no execution provider given (available: {', '.join(available)})")
    return resolved


@contextlib.contextmanager
def _captured() -> Iterator[io.StringIO]:
    """Collect what onnxruntime prints while a session starts (Python prints and native stderr)."""
    text = io.StringIO()
    try:
        os.fstat(2)  # native code writes to file descriptor 2, whatever sys.stderr is
        fd: int | None = 2
    except OSError:
        fd = None
    with tempfile.TemporaryFile(mode="w+b") as native, contextlib.redirect_stdout(text):
        saved = os.dup(2) if fd is not None else None
        if saved is not None:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(native.fileno(), 2)
        try:
            yield text
        finally:
            if saved is not None:
                os.dup2(saved, 2)
                os.close(saved)
            native.seek(0)
            text.write(native.read().decode(errors="replace"))


def _reason(log: str) -> str:
    """The most telling line of a provider's start-up log (library folders left out)."""
    lines = [_LIBRARY.sub(r"\1", _ANSI.sub("", line)).strip() for line in log.splitlines()]
    for marker in ("Failed to load library", "EP Error", "Failed to create", "Please install"):
        for line in lines:
            if marker in line:
                return line[line.index(marker):][:300]
    return "no reason given by onnxruntime"


#: The external data files each SessionOptions already holds (onnxruntime takes a name only once per options).
_HELD: weakref.WeakKeyDictionary[ort.SessionOptions, dict[str, bytes]] = weakref.WeakKeyDictionary()


def _hand_over(options: ort.SessionOptions, files: Mapping[str, bytes], name: str) -> None:
    """Give onnxruntime ``files`` (location -> bytes) from memory, so that it reads no external data from disk.

    onnxruntime reads them where they are (no copy): the options and every session made with them
    keep a reference to them. A file the options already hold is
    not given again (the sequence and step graphs of a bundle share one); one they hold with
    other bytes is refused (those would be read instead).
    """
    held = _HELD.setdefault(options, {})
    new = {}
    for location, data in files.items():
        if location not in held:
            new[location] = data
        elif held[location] is not data and held[location] != data:
            raise ContractError(f"these onnxruntime session options already hold another {location} (the weights "
                                f"of another graph); load {name} with new session options")
    if new:
        options.add_external_initializers_from_files_in_memory(list(new), list(new.values()),
                                                               [len(d) for d in new.values()])
        held.update(new)


def start_session(model: str | os.PathLike[str] | bytes | ExternalModel,
                  providers: ProviderRequest | Sequence[ProviderRequest] | None,
                  options: ort.SessionOptions | None = None, name: str = "the model") -> Started:
    """An onnxruntime session on exactly the requested providers, or the reason it cannot be had.

    Args:
        model: a path, the serialized model (ONNX or ORT format), or a serialized model with the
            external data files it reads (:class:`~rnnexport.core.external.ExternalModel`,
            checked): onnxruntime reads those from memory, never from disk.
        providers: as :func:`resolve_providers` takes them.
        options: session options (default: errors-only logging).
        name: how messages call the model.

    Raises:
        ProviderError: a provider unknown, not in this build, or that did not start
            (the session fell back), with onnxruntime's logged reason.
        LoadError: onnxruntime cannot load the model at all.
    """
    requested = resolve_providers(providers)
    if options is None:
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: shape warnings are the verifier's to report
    if isinstance(model, ExternalModel):
        _hand_over(options, model.files, name)
        source: str | bytes = model.model
    else:
        source = model if isinstance(model, bytes) else os.fspath(model)
    with _captured() as log:
        try:
            session = ort.InferenceSession(source, sess_options=options, providers=requested)
        except Exception as e:  # onnxruntime raises its own untyped errors for bad models
            raise LoadError(f"onnxruntime cannot load {name}: {describe(e)}") from e
    if isinstance(model, ExternalModel):
        # onnxruntime's initializers point into these bytes, not into a copy: they must live as long as the session
        setattr(session, "_rnnexport_external_data", model.files)  # noqa: B010 - a private attribute of ours
    active = session.get_providers()
    for request in requested:
        if _name(request) not in active:
            raise ProviderError(f"{_name(request)} was requested but did not start ({_reason(log.getvalue())}); "
                                f"the session would run on {', '.join(active) or 'nothing'}; to run on CPU, "
                                f"ask for the CPU provider ('cpu')")
    first = requested[0]
    device = Device()
    if _name(first) in _CUDA_PROVIDERS:
        opts = first[1] if isinstance(first, tuple) else {}
        device = Device("cuda", int(opts.get("device_id", 0)))
    return Started(session, device, tuple(active))


# --- time budgets ---------------------------------------------------------------------------------

#: The longest budget a call may be given, in seconds (a week).
MAX_TIMEOUT = 7 * 86400.0


def check_timeout(value: object, what: str = "timeout",
                  error: type[RnnexportError] = ContractError) -> float | None:
    """``value`` as seconds, or None (no bound).

    Raises:
        ``error``: not a number above 0 and at most :data:`MAX_TIMEOUT`.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= MAX_TIMEOUT:
        raise error(f"{what} must be seconds above 0 (at most a week) or None, got {value!r:.40}")
    return float(value)


class TimeLimit:
    """The budget of one onnxruntime call, as a context manager: pass :attr:`options` to ``run``;
    :attr:`expired` says whether the watchdog stopped it. ``options`` is None when the call has no budget."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.options: ort.RunOptions | None = None
        self.deadline = math.inf
        self.expired = False
        self.done = False
        if seconds is not None:
            self.options = ort.RunOptions()
            self.options.log_severity_level = 4  # the stopped call is reported by the caller, not logged
            # onnxruntime's run_with_iobinding looks this entry up on every call and pays for an exception
            # when it is missing (about 50 us, four times a small step); 0 is the value it assumes then
            self.options.add_run_config_entry("gpu_graph_id", "0")

    def __enter__(self) -> TimeLimit:
        if self.seconds is not None:
            self.deadline = time.monotonic() + self.seconds
            _WATCHDOG.add(self)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.seconds is not None:
            _WATCHDOG.remove(self)


class _Watchdog:
    """One daemon thread that terminates the calls whose deadline has passed (started on first use)."""

    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.heap: list[tuple[float, int, TimeLimit]] = []
        self.order = itertools.count()
        self.thread: threading.Thread | None = None
        self.finished = 0  # entries of the heap whose call has ended: dropped when they are the most

    def add(self, limit: TimeLimit) -> None:
        with self.lock:
            heapq.heappush(self.heap, (limit.deadline, next(self.order), limit))
            if self.thread is None or not self.thread.is_alive():  # none yet, or this is a forked child
                self.thread = threading.Thread(target=self._watch, name="rnnexport-watchdog", daemon=True)
                self.thread.start()
            elif self.heap[0][2] is limit:
                self.lock.notify()

    def remove(self, limit: TimeLimit) -> None:
        with self.lock:
            limit.done = True
            self.finished += 1
            if self.finished > 64 and self.finished * 2 > len(self.heap):
                self.heap = [entry for entry in self.heap if not entry[2].done]
                heapq.heapify(self.heap)
                self.finished = 0

    def _watch(self) -> None:
        with self.lock:
            while True:
                while self.heap and self.heap[0][2].done:
                    heapq.heappop(self.heap)
                    self.finished = max(0, self.finished - 1)
                if not self.heap:
                    self.lock.wait()
                    continue
                deadline, _, limit = self.heap[0]
                left = deadline - time.monotonic()
                if left > 0:
                    self.lock.wait(left)
                    continue
                heapq.heappop(self.heap)
                limit.expired = True
                assert limit.options is not None  # only limits with a budget are watched
                limit.options.terminate = True


_WATCHDOG = _Watchdog()


def time_limit(seconds: float | None) -> TimeLimit:
    """A budget of ``seconds`` for the onnxruntime calls made with the limit's ``options`` inside a ``with``.

    Example::

        with time_limit(10.0) as limit:
            try:
                session.run(names, feeds, limit.options)
            except Exception:
                if limit.expired:
                    ...  # stopped after 10 s: the graph did not finish in time
                raise
    """
    return TimeLimit(seconds)


def stopped(session: ort.InferenceSession, what: str, seconds: float) -> RunTimeout:
    """The one-line error of a call that ran over its budget: which engine, what, and the budget."""
    provider = next(iter(session.get_providers()), "")
    return RunTimeout(f"onnxruntime ({provider}) stopped {what} after its time budget of {seconds:g} s: the graph "
                      "did not finish (it may loop without end); give a larger timeout (--timeout) if it is only slow")


def run_limited(session: ort.InferenceSession, names: Sequence[str] | None, feeds: dict[str, Any],
                timeout: float | None, what: str = "a call") -> list[Any]:
    """``session.run(names, feeds)`` within ``timeout`` seconds (None: no bound).

    Raises:
        RunTimeout: the call ran over its budget and was stopped.
        RunError: onnxruntime's own failure (out of memory, an operator's error), as one line.
    """
    with time_limit(timeout) as limit:
        try:
            return list(session.run(names, feeds, limit.options))
        except Exception as e:  # onnxruntime raises Fail, RuntimeException, ... for a graph's failure
            if limit.expired:
                raise stopped(session, what, limit.seconds or 0.0) from e
            raise RunError(f"{what} failed in onnxruntime: {describe(e)}") from e
