"""Streaming from an exported graph with ``rnnexport.runtime`` only: no torch, no onnx.

1. A character LM (``models/lstm-charlm``, or the rnn/gru ones): feed a prompt one
   character at a time, then generate, one step per character, carrying the state.
   The state after the prompt is saved to ``.npz`` and resumed in a new stream,
   which continues with exactly the same text.
2. With ``--signal FORECASTER``: stream a long noisy signal through
   ``models/lstm-forecaster`` in chunks, one-step-ahead forecasts carried across chunks.
3. With ``--streams N``: N generations at once through one ``StreamBatcher``, each
   stream with its own prompt and state, joining one tick after another and leaving
   when done; every tick is one call for all live streams. The first stream's text is
   checked against the same generation run alone.

Make the graphs first (either a bundle folder/zip or a model .onnx will do)::

    rnnexport convert lstm-charlm --form step -o /tmp/charlm-step.onnx
    python scripts/stream_demo.py /tmp/charlm-step.onnx
    rnnexport convert lstm-forecaster -o /tmp/forecaster.onnx
    python scripts/stream_demo.py /tmp/charlm-step.onnx --signal /tmp/forecaster.onnx
    python scripts/stream_demo.py /tmp/charlm-step.onnx --streams 16
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from rnnexport.runtime import StatefulSession, StreamBatcher

# --- configuration -------------------------------------------------------------------------------
CARD = Path(__file__).resolve().parent.parent / "models" / "lstm-charlm" / "card.json"
GENERATE = 200  # characters to generate after the prompt
TEMPERATURE = 0.0  # 0: greedy; > 0: sample from softmax(logits / temperature)
SEED = 0
SIGNAL_STEPS, SIGNAL_CHUNK = 20_000, 500
SIGNAL = {"periods": (11.0, 23.0, 47.0), "amplitudes": (0.5, 0.3, 0.4), "noise_std": 0.05}  # as in training
PROMPTS = ("the hidden state ", "a recurrent network ", "the gate ", "each step of the sequence ",
           "the model learns ", "a stream ")  # --streams: stream i gets PROMPTS[i % 6]

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("model", help="char LM: a bundle folder, a bundle .zip, or a model .onnx (step or sequence)")
parser.add_argument("--card", default=str(CARD), help="model card with the vocabulary and the prompt")
parser.add_argument("--prompt", default=None, help="prompt (default: the card's)")
parser.add_argument("--length", type=int, default=GENERATE)
parser.add_argument("--temperature", type=float, default=TEMPERATURE)
parser.add_argument("--signal", default=None, help="lstm-forecaster bundle or .onnx to stream a long signal through")
parser.add_argument("--streams", type=int, default=0, help="also run N generations at once through a StreamBatcher")
args = parser.parse_args()

# --- 1. the char LM, one character per step ------------------------------------------------------
card = json.loads(Path(args.card).read_text())
vocabulary = card["vocabulary"]
prompt = args.prompt if args.prompt is not None else card.get("prompt", "the ")
session = StatefulSession.load(args.model, threads=1)  # one thread: fastest for one small stream
contract = session.contract
if contract.x_features != (len(vocabulary),) or contract.x_encoding not in ("one-hot", "real"):
    sys.exit(f"{args.model} takes x of {contract.x_features} ({contract.x_encoding}), "
             f"not one-hot over {len(vocabulary)} characters")
print(f"loaded {session.description or args.model}: graphs {', '.join(session.forms)}, "
      f"state {', '.join(contract.state.names)}, on {session.providers[0]}")

eye = np.eye(len(vocabulary), dtype=np.float32)
rng = np.random.default_rng(SEED)


def one_hot(char: str) -> np.ndarray:
    return eye[vocabulary.index(char)][None]  # (B=1, 32)


def pick(logits: np.ndarray, generator: np.random.Generator | None = None) -> int:
    if args.temperature <= 0:
        return int(np.argmax(logits))
    p = np.exp((logits - logits.max()) / args.temperature)
    return int((generator or rng).choice(len(p), p=p / p.sum()))


def generate(stream: StatefulSession, logits: np.ndarray, length: int,
             generator: np.random.Generator | None = None) -> str:
    out = []
    for _ in range(length):
        char = vocabulary[pick(logits, generator)]
        out.append(char)
        logits = stream.step(one_hot(char))[0]
    return "".join(out)


unknown = sorted(set(prompt) - set(vocabulary))
if unknown:
    sys.exit(f"the prompt holds characters outside the vocabulary: {unknown}")
start = time.perf_counter()
for char in prompt:
    logits = session.step(one_hot(char))[0]
after_prompt = logits
saved = io.BytesIO()
np.savez(saved, **session.state)  # what an app writes to disk to resume later
text = generate(session, logits, args.length)
seconds = time.perf_counter() - start
steps = len(prompt) + args.length
print(f"\n{prompt}{text}\n")
print(f"{steps} steps in {seconds * 1e3:.1f} ms ({seconds / steps * 1e6:.0f} us per step, sampling included)")

# resume: a new stream on the same loaded graph, from the state saved after the prompt
resumed = session.new_stream()
saved.seek(0)
with np.load(saved) as state:
    resumed.state = dict(state)
rng = np.random.default_rng(SEED)
same = generate(resumed, after_prompt, args.length) == text
print(f"resumed from the saved state in a new stream: {'same text' if same else 'DIFFERENT text'}")
if not same:
    sys.exit(1)

# --- 2. optionally, a long signal in chunks ------------------------------------------------------
if args.signal:
    forecaster = StatefulSession.load(args.signal, threads=1)
    t = np.arange(SIGNAL_STEPS + 1)
    clean = sum(a * np.sin(2 * math.pi * t / p + k) for k, (a, p) in
                enumerate(zip(SIGNAL["amplitudes"], SIGNAL["periods"], strict=True)))
    signal = (clean + SIGNAL["noise_std"] * np.random.default_rng(1).standard_normal(t.shape)).astype(np.float32)
    start = time.perf_counter()
    errors = []
    for a in range(0, SIGNAL_STEPS, SIGNAL_CHUNK):  # chunks in, forecasts out, state carried inside
        chunk = signal[a:a + SIGNAL_CHUNK, None, None]  # (T, B=1, 1)
        forecast = forecaster.run(chunk) if "sequence" in forecaster.forms else \
            np.stack([forecaster.step(x) for x in chunk])
        errors.append((forecast[:, 0, 0] - signal[a + 1:a + 1 + SIGNAL_CHUNK]) ** 2)
    seconds = time.perf_counter() - start
    errors = np.concatenate(errors)
    baseline = np.mean((signal[1:] - signal[:-1]) ** 2)
    print(f"\nstreamed {SIGNAL_STEPS} steps of a noisy sum of sines in chunks of {SIGNAL_CHUNK} "
          f"({seconds * 1e3:.0f} ms)")
    print(f"one-step-ahead MSE {errors[16:].mean():.5f} (first 1000 steps {errors[16:1000].mean():.5f}, "
          f"last 1000 {errors[-1000:].mean():.5f}); predict-last-value MSE {baseline:.5f}; "
          f"noise floor {SIGNAL['noise_std'] ** 2:.5f}")

# --- 3. optionally, N generations at once through one StreamBatcher ------------------------------
if args.streams:
    batcher = StreamBatcher.load(args.model, threads=1, max_batch=args.streams)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.streams)]
    unknown = sorted(set("".join(prompts)) - set(vocabulary))
    if unknown:
        sys.exit(f"PROMPTS hold characters outside the vocabulary: {unknown}")
    generators = [np.random.default_rng(SEED + i) for i in range(args.streams)]
    fed, texts, nxt = {}, {}, {}  # per stream: characters fed, generated text, the next input
    start, tick = time.perf_counter(), 0
    while tick < args.streams or batcher.streams:
        if tick < args.streams:  # stream `tick` joins now: streams come and go at any tick
            batcher.join(tick)
            fed[tick], texts[tick], nxt[tick] = 0, [], prompts[tick][0]
        ys = batcher.step({i: one_hot(nxt[i]) for i in batcher.streams})
        for i, y in ys.items():
            fed[i] += 1
            if fed[i] < len(prompts[i]):
                nxt[i] = prompts[i][fed[i]]
                continue
            nxt[i] = vocabulary[pick(y[0], generators[i])]
            texts[i].append(nxt[i])
            if len(texts[i]) == args.length:
                batcher.leave(i)
        tick += 1
    seconds = time.perf_counter() - start
    stats = batcher.stats
    print(f"\n{args.streams} generations at once through one StreamBatcher:")
    for i in range(min(args.streams, 4)):
        print(f"  [{i}] {prompts[i]}{''.join(texts[i])[:70]}...")
    print(f"{stats.steps} steps in {stats.calls} calls ({stats.mean_batch:.1f} streams per call), "
          f"{seconds * 1e3:.0f} ms: {stats.steps / seconds:,.0f} steps/s, sampling included")
    alone = session.new_stream()  # stream 0 again, on its own
    for char in prompts[0]:
        logits = alone.step(one_hot(char))[0]
    same = generate(alone, logits, args.length, np.random.default_rng(SEED)) == "".join(texts[0])
    print(f"stream 0 run alone: {'same text' if same else 'DIFFERENT text'}")
    if not same:
        sys.exit(1)
