"""What a lossy variant changes in a character model's text, as figures.

A variant can pass its numeric tolerance and still pick other characters: a char model
turns small logit changes into different text. For a graph whose contract is a char
model (one-hot ``x`` over a vocabulary, logits ``y`` over the same vocabulary), the
float32 graph writes a text by sampling (temperature 1, seeded) from the prompt; then

- ``next_char_agreement``: the share of that text's characters at which the variant,
  fed the same text, picks the same greedy next character as float32;
- ``greedy_same_chars``: how many characters the two generate greedily from the
  prompt before they first differ (``text_chars`` when they never do).

Both run through :class:`rnnexport.runtime.StatefulSession`, as an app would.
:func:`sampled_text` gives such text as a batch of one-hot streams, the inputs a variant of
a char model is checked on (a char model fed random characters is chaotic: any change of its
weights moves its logits by units after a few dozen characters, docs/bundle.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rnnexport.core.contract import IOSpec
from rnnexport.runtime import StatefulSession

__all__ = ["TEXT_CHARS", "is_char_model", "sampled_text", "text_agreement", "text_notes"]

#: Characters of text each figure is measured over.
TEXT_CHARS = 400
_SEED = 0


def is_char_model(io: IOSpec) -> bool:
    """One-hot ``x`` over a vocabulary, and logits ``y`` over the same one."""
    return io.x_encoding == "one-hot" and io.vocabulary is not None and io.y_features == io.x_features


def _one_hot(io: IOSpec, ids: list[int]) -> np.ndarray:
    assert io.vocabulary is not None  # is_char_model
    eye = np.eye(len(io.vocabulary), dtype=io.x_dtype)
    return np.ascontiguousarray(eye[ids][:, None, :])  # (T, B=1, V)


def _prompt_ids(io: IOSpec, prompt: str | None) -> list[int]:
    assert io.vocabulary is not None  # is_char_model
    known = [io.vocabulary.index(ch) for ch in (prompt or "") if ch in io.vocabulary]
    return known or [0]


def _greedy(session: StatefulSession, io: IOSpec, prompt: list[int], count: int) -> list[int]:
    session.reset()
    logits = session.run(_one_hot(io, prompt))[-1, 0]
    out = []
    for _ in range(count):
        out.append(int(np.argmax(logits)))
        logits = session.step(_one_hot(io, out[-1:])[0])[0]
    return out


def _sampled(session: StatefulSession, io: IOSpec, prompt: list[int], count: int, seed: int = _SEED) -> list[int]:
    rng = np.random.default_rng(seed)
    session.reset()
    logits = session.run(_one_hot(io, prompt))[-1, 0].astype(np.float64)
    out = []
    for _ in range(count):
        p = np.exp(logits - logits.max())
        out.append(int(rng.choice(len(p), p=p / p.sum())))
        logits = session.step(_one_hot(io, out[-1:])[0])[0].astype(np.float64)
    return out


def sampled_text(reference: Path, io: IOSpec, prompt: str | None, streams: int, length: int,
                 timeout: float | None = None) -> np.ndarray:
    """``(length, streams, V)`` one-hot (time-major): the prompt, then text the float32 graph samples (seeds 1, 2,
    ...), each call within ``timeout`` seconds."""
    session = StatefulSession.load(reference, threads=1, timeout=timeout)
    start = _prompt_ids(io, prompt)[:length]
    texts = [start + _sampled(session, io, start, length - len(start), seed=_SEED + 1 + k) for k in range(streams)]
    assert io.vocabulary is not None  # is_char_model
    x = np.eye(len(io.vocabulary), dtype=io.x_dtype)[np.asarray(texts).T]
    return np.ascontiguousarray(x if io.time_axis == 0 else np.swapaxes(x, 0, 1))


def text_agreement(reference: Path, variant: Path, io: IOSpec, prompt: str | None,
                   timeout: float | None = None) -> dict[str, Any]:
    """The figures above for the graph file ``variant`` against the float32 graph ``reference``
    (each call within ``timeout`` seconds)."""
    want = StatefulSession.load(reference, threads=1, timeout=timeout)
    got = StatefulSession.load(variant, threads=1, timeout=timeout)
    start = _prompt_ids(io, prompt)
    text = start + _sampled(want, io, start, TEXT_CHARS)
    choices = []
    for session in (want, got):
        session.reset()
        choices.append(np.argmax(session.run(_one_hot(io, text[:-1]))[:, 0], axis=-1)[len(start) - 1:])
    same = float(np.mean(choices[0] == choices[1]))
    greedy = [_greedy(s, io, start, TEXT_CHARS) for s in (want, got)]
    differ = next((i for i, (a, b) in enumerate(zip(*greedy, strict=True)) if a != b), TEXT_CHARS)
    assert io.vocabulary is not None  # is_char_model
    return {"text_chars": TEXT_CHARS, "prompt": "".join(io.vocabulary[i] for i in start),
            "next_char_agreement": round(same, 4), "greedy_same_chars": differ}


def text_notes(agreement: dict[str, Any]) -> str:
    """The figures as a sentence for the variant's notes."""
    chars, same = agreement["text_chars"], agreement["greedy_same_chars"]
    greedy = ("identical for all" if same == chars else f"identical for the first {same} of") + f" {chars} characters"
    return (f"text against float32: greedy next-character choice agrees at "
            f"{agreement['next_char_agreement']:.1%} of {chars} characters of text sampled from the float32 graph; "
            f"greedy text from the prompt {agreement['prompt']!r} is {greedy}")
