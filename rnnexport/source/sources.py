"""What a user points at, turned into a :class:`~rnnexport.source.model.RecurrentModel`.

Sources: a built-in seed cell (``rnn``, ``lstm``, ``gru``) with generated or loaded
weights; a trained example model from ``models/`` (by name or folder); a torch.nn
RNN/LSTM/GRU, a module built around one, or any causal module with its own (nested)
state (:func:`from_module`, the last via :mod:`rnnexport.source.loops`); a user's loop in
the seed's convention (:func:`from_cell`); or ``file.py:factory`` /
``package.module:factory`` naming a function that returns either.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from rnnexport.core.contract import IOSpec, Layout, StateSpec
from rnnexport.core.data import MAX_JSON_BYTES, load_json
from rnnexport.core.errors import SourceError, WeightsError, describe
from rnnexport.source import cells, gates, torchnn, zoo
from rnnexport.source.cells import CellKind
from rnnexport.source.explicit import explicit_copy
from rnnexport.source.loops import from_loop_module, with_initial_state
from rnnexport.source.model import RecurrentModel, SourceKind
from rnnexport.source.plan import NativeLayer, NativePlan
from rnnexport.source.probe import InputGuess, first_fitting, input_guesses, probe_output
from rnnexport.source.torchnn import FAMILY, TorchSequence, native_plan

__all__ = [
    "SourceSpec",
    "builtin",
    "from_cell",
    "from_module",
    "load_source",
    "load_weights",
    "models_dir",
]

DEFAULT_INPUT_SIZE = 28
DEFAULT_HIDDEN_SIZE = 256
CARD_FORMAT = "rnnexport.card/1"
#: A loop in the seed's convention: ``fn(inputs, state, params) -> (outputs, state)``.
CellFn = Callable[[torch.Tensor, tuple[torch.Tensor, ...], list[torch.Tensor]], tuple[torch.Tensor, Any]]


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """A source as the CLI names it: ``rnn|lstm|gru``, a model name or folder, or ``X:factory``."""

    name: str
    input_size: int | None = None
    hidden_size: int | None = None
    output_size: int | None = None
    weights: str | None = None
    seed: int = 0


# --------------------------------------------------------------------------- seed cells


class SeedSequence(torch.nn.Module):
    """A seed-convention loop as ``forward(x, *state) -> (y (T, B, Q), *state_out)``."""

    def __init__(self, fn: CellFn, params: Sequence[tuple[str, torch.Tensor]]) -> None:
        super().__init__()
        self.fn = fn
        self.names = [name for name, _ in params]
        for index, (_, tensor) in enumerate(params):
            self.register_buffer(f"p{index}", tensor.detach().clone().float())

    def forward(self, x: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        params = [getattr(self, f"p{i}") for i in range(len(self.names))]
        outputs, state_out = self.fn(x, tuple(state), params)
        return (outputs.reshape(x.shape[0], x.shape[1], -1), *state_out)


def _seed_plan(kind: CellKind, named: dict[str, torch.Tensor]) -> NativePlan:
    arrays = {k: v.detach().float().numpy() for k, v in named.items()}
    W, R, B = gates.seed_layer_weights(kind, arrays)
    layer = NativeLayer(
        op=gates.ONNX_OP[kind],
        W=W[None],
        R=R[None],
        B=B[None],
        hidden_size=R.shape[1],
        activations=("Tanh",) if kind is CellKind.RNN else None,
        linear_before_reset=0 if kind is CellKind.GRU else None,
    )
    return NativePlan(layers=(layer,), head=(arrays["W_hq"], arrays["b_q"]))


def _seed_model(
    kind: CellKind,
    fn: CellFn,
    named: list[tuple[str, torch.Tensor]],
    source_kind: SourceKind,
    origin: dict[str, Any],
    description: str,
) -> RecurrentModel:
    by_name = dict(named)
    hidden = by_name[cells.PARAM_NAMES[kind][1]].shape[0]
    io = IOSpec(
        x_features=(by_name[cells.PARAM_NAMES[kind][0]].shape[0],),
        x_dtype="float32",
        y_features=(by_name["W_hq"].shape[1],),
        state=StateSpec(cells.STATE_NAMES[kind], ((hidden,),) * len(cells.STATE_NAMES[kind]), 0),
    )
    return RecurrentModel(
        kind=source_kind,
        family=kind.value,
        io=io,
        sequence_module=SeedSequence(fn, named),
        params=named,
        native=_seed_plan(kind, by_name),
        origin=origin,
        description=description,
    )


def load_weights(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Tensors from a ``.safetensors`` file or a torch file (loaded with ``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist; pass an existing .safetensors or .pt file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(path)))
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any reader failure is a bad file for the user
        raise WeightsError(f"cannot read weights file {path}: {describe(e)}") from e
    if isinstance(loaded, dict) and all(isinstance(v, torch.Tensor) for v in loaded.values()):
        return dict(loaded)
    raise WeightsError(f"weights file {path} holds a {type(loaded).__name__}, not a dict of named tensors")


def _check_weights(kind: CellKind, weights: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]],
                   label: str) -> None:
    missing = [n for n in shapes if n not in weights]
    extra = [n for n in weights if n not in shapes]
    if missing:
        raise WeightsError(f"{label} lacks tensor {missing[0]!r} of the {kind.value} layout "
                           f"(expected names: {', '.join(shapes)})")
    if extra:
        raise WeightsError(f"{label} has tensor {extra[0]!r}, which the {kind.value} layout "
                           f"does not have (expected names: {', '.join(shapes)})")
    for name, shape in shapes.items():
        got = tuple(weights[name].shape)
        if got != shape:
            raise WeightsError(f"tensor {name!r} in {label} has shape {got}, the {kind.value} layout "
                               f"needs {shape}; check --input-size/--hidden-size/--output-size")


def _sizes_from_weights(kind: CellKind, weights: dict[str, torch.Tensor],
                        spec: SourceSpec) -> tuple[int | None, int | None, int | None]:
    first, recurrent = cells.PARAM_NAMES[kind][:2]
    def dim(name: str, axis: int, given: int | None) -> int | None:
        if given is not None or name not in weights or weights[name].dim() != 2:
            return given
        return int(weights[name].shape[axis])
    return (
        dim(first, 0, spec.input_size),
        dim(recurrent, 0, spec.hidden_size),
        dim("W_hq", 1, spec.output_size),
    )


#: The most parameters a built-in cell may have (1 GiB of float32 weights), checked before allocating.
MAX_PARAMETERS = 1 << 28


def _check_sizes(kind: CellKind, input_size: int, hidden_size: int, output_size: int | None) -> None:
    sizes = {"--input-size": input_size, "--hidden-size": hidden_size, "--output-size": output_size or input_size}
    for option, size in sizes.items():
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise SourceError(f"{option} must be a positive integer, got {size!r}")
    gates = {CellKind.RNN: 1, CellKind.GRU: 3, CellKind.LSTM: 4}[kind]
    count = gates * hidden_size * (input_size + hidden_size + 1) + hidden_size * sizes["--output-size"]
    if count > MAX_PARAMETERS:
        raise SourceError(f"a {kind.value} of input {input_size}, hidden {hidden_size} has {count:,} parameters, "
                          f"over the limit of {MAX_PARAMETERS:,} ({MAX_PARAMETERS * 4 / 2**30:.0f} GiB of float32); "
                          "choose smaller sizes")


def builtin(
    kind: CellKind | str,
    input_size: int | None = None,
    hidden_size: int | None = None,
    output_size: int | None = None,
    weights: str | os.PathLike[str] | None = None,
    seed: int = 0,
    origin: dict[str, Any] | None = None,
    params: Sequence[torch.Tensor] | None = None,
) -> RecurrentModel:
    """A seed cell with weights from ``weights``, ``params`` or :func:`rnnexport.source.cells.init_params`.

    Args:
        kind: ``"rnn"``, ``"lstm"`` or ``"gru"``.
        input_size, hidden_size, output_size: the sizes; with weights, those not
            given are read from the tensors, and those given must agree with them.
        weights: a ``.safetensors`` or torch file of tensors named as the seed names them.
        seed: seed of generated weights (when neither ``weights`` nor ``params``).
        origin: provenance to record instead of the default.
        params: the parameter list in the seed's order, instead of a file.
    """
    kind = CellKind(kind)
    spec = SourceSpec(kind.value, input_size, hidden_size, output_size)
    if params is not None:
        names = cells.PARAM_NAMES[kind]
        if len(params) != len(names):
            raise WeightsError(f"params: a seed {kind.value} takes {len(names)} tensors ({', '.join(names)}), "
                               f"got {len(params)}")
        loaded, label = dict(zip(names, params, strict=True)), "the given params"
    elif weights is not None:
        loaded, label = load_weights(weights), f"weights file {weights}"
    else:
        loaded, label = None, ""
    if loaded is not None:
        input_size, hidden_size, output_size = _sizes_from_weights(kind, loaded, spec)
    input_size = input_size or DEFAULT_INPUT_SIZE
    hidden_size = hidden_size or DEFAULT_HIDDEN_SIZE
    _check_sizes(kind, input_size, hidden_size, output_size)
    shapes = cells.param_shapes(kind, input_size, hidden_size, output_size)
    if loaded is not None:
        _check_weights(kind, loaded, shapes, label)
        tensors = [loaded[n].detach().float() for n in shapes]
    else:
        tensors = cells.init_params(kind, input_size, hidden_size, output_size, seed=seed)
    named = list(zip(shapes, tensors, strict=True))
    q = shapes["W_hq"][1]
    origin = origin or {
        "builtin": kind.value,
        "input_size": input_size,
        "hidden_size": hidden_size,
        "output_size": q,
        "weights": _portable(weights) if weights is not None and params is None else None,
        "seed": seed if loaded is None else None,
    }
    text = f"seed {kind.value} (input {input_size}, hidden {hidden_size}, output {q})"
    return _seed_model(kind, cells.CELL_FUNCTIONS[kind], named, SourceKind.BUILTIN, origin, text)


def _portable(path: str | os.PathLike[str]) -> str:
    """``path`` relative to the working folder (as ``verify`` run there finds it), never absolute.

    A graph records where its weights came from; an absolute path would make the same
    model give different bytes on every machine and leak the build machine's layout.
    """
    try:
        return Path(os.path.relpath(path)).as_posix()
    except ValueError:  # another drive (Windows): the name is all that can be said portably
        return Path(path).name


# --------------------------------------------------------------------------- user cells


def _recognise_cell(fn: CellFn, named: list[tuple[str, torch.Tensor]],
                    state: Sequence[torch.Tensor]) -> CellKind | None:
    """The seed cell that ``fn`` computes, found by running both on a probe input."""
    shapes = [tuple(t.shape) for _, t in named]
    for kind in CellKind:
        if len(state) != len(cells.STATE_NAMES[kind]) or len(shapes) != len(cells.PARAM_NAMES[kind]):
            continue
        i, h, q = shapes[0][0], shapes[1][0], shapes[-1][0]
        if list(cells.param_shapes(kind, i, h, q).values()) != shapes:
            continue
        gen = torch.Generator().manual_seed(1234)
        x = torch.randn(3, 2, i, generator=gen)
        s = tuple(torch.randn(2, h, generator=gen) for _ in state)
        params = [t.float() for _, t in named]
        with torch.no_grad():
            ours, ours_state = cells.CELL_FUNCTIONS[kind](x, s, params)
            try:
                theirs, theirs_state = fn(x, s, params)
            except Exception:  # noqa: BLE001 - not recognised; the real call reports errors
                return None
        if not isinstance(theirs_state, (tuple, list)) or len(theirs_state) != len(ours_state):
            continue  # not this cell's state; the real call reports what is wrong
        pairs = [(ours, theirs), *zip(ours_state, theirs_state, strict=True)]
        if all(a.shape == b.shape and torch.allclose(a, b, atol=1e-6) for a, b in pairs):
            return kind
    return None


def from_cell(
    fn: CellFn,
    params: Sequence[torch.Tensor] | dict[str, torch.Tensor],
    init_state: Sequence[torch.Tensor],
    state_names: Sequence[str] | None = None,
    input_size: int | None = None,
) -> RecurrentModel:
    """A user's loop in the seed's convention, ``fn(inputs, state, params) -> (outputs, state)``.

    Args:
        fn: the loop; ``inputs`` is ``(T, B, I)``, ``outputs`` is ``(T * B, Q)``.
        params: the parameters, a list (named ``p0``, ``p1``, ...) or a dict.
        init_state: example state tensors, each ``(B, H)``.
        state_names: names of the state tensors; default ``h`` (and ``c`` for two).
        input_size: I; defaults to the first dimension of the first parameter, as in
            the seed's layouts where it is ``W_x*``.

    A loop that computes one of the seed's cells (checked numerically on a probe
    input) can use the native lowering; any other uses scan.
    """
    named = list(params.items()) if isinstance(params, dict) else [(f"p{i}", t) for i, t in enumerate(params)]
    named = [(n, t.detach().float()) for n, t in named]
    state = tuple(init_state)
    if not state or any(s.dim() != 2 for s in state):
        raise SourceError("init_state must be a tuple of example state tensors shaped (B, H)")
    names = tuple(state_names) if state_names else ("h", "c")[: len(state)] if len(state) <= 2 else None
    if names is None or len(names) != len(state):
        raise SourceError(f"give state_names for the {len(state)} state tensors")
    if input_size is None:
        if not named or named[0][1].dim() != 2:
            raise SourceError("cannot infer the input size from the parameters; pass input_size=")
        input_size = int(named[0][1].shape[0])
    kind = _recognise_cell(fn, named, state)
    if kind is not None and names == cells.STATE_NAMES[kind]:
        named = [(seed_name, t) for seed_name, (_, t) in zip(cells.PARAM_NAMES[kind], named, strict=True)]
        origin = {"cell_fn": getattr(fn, "__qualname__", repr(fn)), "recognised": kind.value}
        return _seed_model(kind, fn, named, SourceKind.CELL, origin, f"user loop (computes the seed {kind.value})")
    sequence = SeedSequence(fn, named)
    batch = state[0].shape[0]
    probe_x = torch.zeros(2, batch, input_size)
    try:
        with torch.no_grad():
            y, *state_out = sequence(probe_x, *state)
    except Exception as e:  # a user's function failing is a user error
        raise SourceError(f"the cell function failed on an example input (T=2, B={batch}, I={input_size}): "
                          f"{describe(e)}") from e
    io = IOSpec(
        x_features=(input_size,),
        x_dtype="float32",
        y_features=tuple(y.shape[2:]),
        state=StateSpec(names, tuple(tuple(s.shape[1:]) for s in state), 0),
    )
    return RecurrentModel(
        kind=SourceKind.CELL,
        family=None,
        io=io,
        sequence_module=sequence,
        params=named,
        native=None,
        native_reason="the loop is not one of the seed's rnn/lstm/gru cells",
        origin={"cell_fn": getattr(fn, "__qualname__", repr(fn))},
        description=f"user loop {getattr(fn, '__qualname__', '')}".strip(),
    )


# --------------------------------------------------------------------------- torch.nn modules


def from_module(module: torch.nn.Module, input_size: int | None = None) -> RecurrentModel:
    """A torch.nn.RNN/LSTM/GRU, a module built around one, or any causal module with its own state.

    A module built around exactly one torch.nn RNN/LSTM/GRU with torch's convention
    ``forward(x, state) -> (y, state)``, ``state`` a tensor ``h`` (``(h, c)`` for an
    LSTM) shaped like the inner layer's, keeps the state names ``h`` (and ``c``).
    Any other module with ``forward(x, state) -> (y, state)`` (cell loops, stacked
    layers, nested state as tuples, lists and dicts of tensors) is read by
    :func:`rnnexport.source.loops.from_loop_module`: its ``initial_state(batch)`` method (or
    ``init_hidden``, ``begin_state``, ...), the state ``forward(x)`` returns, or the buffers
    ``forward(x)`` updates give the structure (docs/modules.md).
    The input is token ids when an ``nn.Embedding`` comes first, else vectors of
    ``input_size`` (default: the first size the module's layers suggest that its forward
    accepts: a Linear's, a recurrent layer's, a Conv1d's, a LayerNorm's).
    """
    if not isinstance(module, torch.nn.Module):
        raise SourceError(f"expected a torch.nn.Module, got {type(module).__name__}")
    module = module.eval()
    rnns = [m for m in module.modules() if isinstance(m, torch.nn.RNNBase)]
    if len(rnns) != 1:
        return from_loop_module(module, input_size)
    rnn = rnns[0]
    kind = FAMILY[rnn.mode]
    directions = torchnn.directions(rnn)
    hidden = rnn.hidden_size
    proj = getattr(rnn, "proj_size", 0)
    stacked = rnn.num_layers * directions
    names = cells.STATE_NAMES[kind]
    dims = ((stacked, proj or hidden), (stacked, hidden))[: len(names)]
    bare = module is rnn
    owner = type(module).__name__
    layout = Layout.BATCH_MAJOR if rnn.batch_first else Layout.TIME_MAJOR
    sequence = TorchSequence(module, kind is CellKind.LSTM)
    state = StateSpec(names, dims, 1)

    def attempt(guess: InputGuess) -> tuple[int, ...]:
        return probe_output(sequence, guess.features, guess.dtype, state, layout)

    try:
        guess, y_features = first_fitting(input_guesses(module, input_size, owner), attempt, owner)
    except SourceError as e:  # not torch's convention: the module may carry a state of its own
        if bare:
            raise
        return from_loop_module(module, input_size, layer_error=e)
    x_features, x_dtype = guess.features, guess.dtype
    state = with_initial_state(module, state)  # a wrapper's own initial_state: where a stream starts
    io = IOSpec(x_features, x_dtype, y_features, state, layout,
                x_encoding="token-ids" if x_dtype == "int64" else "real")
    plan, reason = native_plan(rnn) if bare else (None, "native covers bare torch.nn RNN/LSTM/GRU modules; "
                                                 f"{type(module).__name__} has other layers around its {rnn.mode}")
    name = type(rnn).__name__
    config = f"{rnn.num_layers} layer{'s' if rnn.num_layers > 1 else ''}, hidden {hidden}"
    config += ", bidirectional" if directions == 2 else ""
    config += f", proj {proj}" if proj else ""
    config += ", batch_first" if rnn.batch_first else ""
    text = f"torch.nn.{name} ({config})" if bare else f"{type(module).__name__} around torch.nn.{name} ({config})"
    return RecurrentModel(
        kind=SourceKind.MODULE,
        family=kind.value,
        io=io,
        sequence_module=sequence,
        params=[(n, p.detach()) for n, p in module.state_dict().items()],
        native=plan,
        native_reason=reason,
        origin={"module": type(module).__qualname__},
        description=text,
        trace_module=TorchSequence(explicit_copy(module), kind is CellKind.LSTM),
    )


# --------------------------------------------------------------------------- resolving names


#: The environment variable naming another folder of trained models (``NAME/card.json`` each).
MODELS_ENV = "RNNEXPORT_MODELS"


def models_dir() -> Path:
    """Where trained models are found by name: ``$RNNEXPORT_MODELS``, else the shipped ones.

    A wheel ships the repository's ``models/`` as package data (``rnnexport/models``);
    a checkout (or an editable install) reads ``models/`` beside the package.
    """
    given = os.environ.get(MODELS_ENV)
    if given:
        return Path(given)
    package = Path(__file__).resolve().parent.parent  # rnnexport/
    shipped = package / "models"
    return shipped if shipped.is_dir() else package.parent / "models"


def _card_path(name: str) -> Path | None:
    path = Path(name)
    if path.is_file() and path.name == "card.json":
        return path
    if (path / "card.json").is_file():
        return path / "card.json"
    if "/" not in name and (models_dir() / name / "card.json").is_file():
        return models_dir() / name / "card.json"
    return None


def load_card(path: Path) -> dict[str, Any]:
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise SourceError(f"model card {path} is over {MAX_JSON_BYTES} bytes; it is not a model card")
        card = load_json(path.read_bytes(), f"model card {path}", SourceError)
    except OSError as e:
        raise SourceError(f"cannot read model card {path}: {e}") from e
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        raise SourceError(f"{path} is not a model card of format {CARD_FORMAT}")
    return card


def _from_card(path: Path) -> RecurrentModel:
    card = load_card(path)
    weights = path.parent / card["weights"]
    origin = {"model": card["name"]}  # a name, never a path: the same model gives the same bytes anywhere
    if card["source"] == "builtin":
        model = builtin(card["cell"], card["input_size"], card["hidden_size"], card["output_size"],
                        weights=weights, origin=origin)
        if card.get("input") == "one-hot":
            vocabulary = card.get("vocabulary")
            io = dataclasses.replace(model.io, x_encoding="one-hot",
                                     vocabulary=tuple(vocabulary) if isinstance(vocabulary, str) else None)
            model = dataclasses.replace(model, io=io)
    else:
        module = _call_factory(card["factory"], _card_factory(path, card["factory"]),
                               card.get("factory_kwargs", {}))
        state = load_weights(weights)
        try:
            module.load_state_dict(state)
        except RuntimeError as e:
            raise WeightsError(f"weights {weights} do not fit {card['factory']}: {e}") from e
        model = from_module(module)
        model = dataclasses.replace(model, origin=origin)
    return dataclasses.replace(model, description=f"{card['name']}: {model.description}", card=card)


@contextlib.contextmanager
def _import_root(target: str) -> Iterator[None]:
    """``sys.path`` as Python would have it for ``target``, while it is imported and called.

    For ``file.py:factory``, the file's folder (``python file.py`` puts it first, so its
    sibling modules import); for ``package.module:factory``, the working folder (as
    ``python -m`` has it, which a console script does not).
    """
    where = target.rpartition(":")[0]
    folder = str(Path(where).resolve().parent) if where.endswith(".py") else os.getcwd()
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        yield
    finally:
        if added and folder in sys.path:
            sys.path.remove(folder)


def _module_name(path: Path) -> str:
    """A module name for the user's file: its own name under a prefix no installed package uses.

    The prefix keeps ``models.py`` or ``json.py`` from shadowing a real module; the name
    shows in a traced graph's node metadata, so it depends on nothing but the file name.
    """
    stem = "".join(c if c.isalnum() or c == "_" else "_" for c in path.stem)
    return f"rnnexport_user_{stem}"


def _card_factory(path: Path, name: object) -> Callable[..., torch.nn.Module]:
    """The zoo class a card names: looked up in a table, never imported (a card is data)."""
    known = {zoo.CARD_PREFIX + key: cls for key, cls in zoo.FACTORIES.items()}
    if not isinstance(name, str) or name not in known:
        raise SourceError(f"{path} names factory {name!r}, which is not one of rnnexport's model classes "
                          f"({', '.join(sorted(known))}); convert your own module as file.py:factory instead")
    return known[name]


def _resolve_factory(target: str) -> Callable[..., Any]:
    where, _, attr = target.rpartition(":")
    if not where or not attr:
        raise SourceError(f"{target!r} is not file.py:factory or package.module:factory")
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise SourceError(f"{where} does not exist; give the path of a Python file before ':'")
        name = _module_name(path)
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None  # a .py path always gets a source loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as e:  # the user's file failing to import is a user error
            raise SourceError(f"importing {where} failed: {describe(e)}") from e
    else:
        try:
            module = importlib.import_module(where)
        except Exception as e:  # the user's file failing to import is a user error
            raise SourceError(f"cannot import module {where!r}: {describe(e)}") from e
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise SourceError(f"{where} has no function {attr!r}; name a function that returns "
                          "a torch.nn.Module or rnnexport.from_cell(...)")
    return factory


def _call_factory(target: str, factory: Callable[..., Any], kwargs: dict[str, Any] | None = None) -> Any:
    try:
        return factory(**(kwargs or {}))
    except SystemExit as e:
        raise SourceError(f"{target}() called sys.exit({e.code!r}) instead of returning a model") from e
    except Exception as e:  # a user's function failing is a user error
        raise SourceError(f"{target}() raised {describe(e)}") from e


def source_files(spec: SourceSpec | str | torch.nn.Module | RecurrentModel) -> list[Path]:
    """The files a source reads (weights, a factory's file, a trained model's folder): outputs must spare them."""
    if isinstance(spec, str):
        spec = SourceSpec(spec)
    if not isinstance(spec, SourceSpec):
        return []
    files = [Path(spec.weights)] if spec.weights else []
    card = _card_path(spec.name) if spec.name not in {k.value for k in CellKind} else None
    if card is not None:
        files.append(card.parent)
    where = spec.name.rpartition(":")[0]
    if where.endswith(".py"):
        files.append(Path(where))
    return files


def _sizes_apply_to_cells(spec: SourceSpec, whose: str, input_too: bool = False) -> None:
    """Refuse sizes the source cannot take: only a built-in cell is built from them (a factory's input size is read)."""
    options: list[tuple[str, object]] = [("--input-size", spec.input_size)] if input_too else []
    options += [("--hidden-size", spec.hidden_size), ("--output-size", spec.output_size), ("--weights", spec.weights)]
    given = [option for option, value in options if value is not None]
    if given:
        raise SourceError(f"{given[0]} applies to the built-in cells (rnn, lstm, gru); {whose} sizes and weights "
                          f"come from the model itself: drop {given[0]}")


def load_source(spec: SourceSpec | str | torch.nn.Module | RecurrentModel) -> RecurrentModel:
    """Any supported source as a :class:`RecurrentModel`."""
    if isinstance(spec, RecurrentModel):
        return spec
    if isinstance(spec, torch.nn.Module):
        return from_module(spec)
    if isinstance(spec, str):
        spec = SourceSpec(spec)
    name = spec.name
    if name in {k.value for k in CellKind}:
        return builtin(name, spec.input_size, spec.hidden_size, spec.output_size, spec.weights, spec.seed)
    card = _card_path(name)
    if card is not None:
        _sizes_apply_to_cells(spec, "a trained model's", input_too=True)
        return _from_card(card)
    if ":" in name:
        _sizes_apply_to_cells(spec, "a factory's")
        with _import_root(name):
            result = _call_factory(name, _resolve_factory(name))
        if isinstance(result, RecurrentModel):
            if spec.input_size is not None and result.io.x_features != (spec.input_size,):
                raise SourceError(f"{name}() returned a model of input {result.io.x_features}, but --input-size is "
                                  f"{spec.input_size}; drop --input-size or make them agree")
            return result
        if isinstance(result, torch.nn.Module):
            return from_module(result, spec.input_size)
        raise SourceError(f"{name}() returned {type(result).__name__}; it must return a torch.nn.Module "
                          "or rnnexport.from_cell(...)")
    known = ", ".join(k.value for k in CellKind)
    if Path(name).is_dir():
        raise SourceError(_not_a_model_folder(Path(name)))
    raise SourceError(f"unknown model {name!r}: give one of {known}, a model in {models_dir()}, "
                      "a model folder, or file.py:factory")


def _not_a_model_folder(folder: Path) -> str:
    """Why ``folder`` is not a model folder, and what rnnexport reads instead."""
    reads = ("rnnexport reads a model folder with card.json and weights.safetensors (docs/models.md), a seed "
             "cell's weights with --weights, or file.py:factory that builds your torch.nn module and loads "
             "its weights")
    if (folder / "config.json").is_file():
        return (f"{folder} looks like a Hugging Face model folder (config.json), which rnnexport cannot build a "
                f"model from: {reads}")
    return f"folder {folder} holds no card.json: {reads}"

