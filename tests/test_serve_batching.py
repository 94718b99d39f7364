"""Batched decoding (mixcli.serve.batching, mixcli.serve.engine) on tiny Qwen2-VL and InternVL checkpoints:
the batched NumPy step against the Paddle oracle run per sequence, and each sequence of a batch, joining
and leaving at different steps, decoding the tokens it gets alone."""

from __future__ import annotations

import queue
import threading

import numpy as np
import pytest

from helpers import picture
from internvl_ref import TinyInternVL
from internvl_ref import write_checkpoint as write_internvl
from qwen2_vl_ref import write_checkpoint as write_qwen2_vl

from mixcli.generation import SamplingConfig
from mixcli.serve.batching import BatchedDecoder
from mixcli.serve.engine import Engine, Job
from mixcli.vlm import answer, load_vlm, prepare_request

QUESTIONS = [("What is it?", 1), ("Describe the picture in detail, please.", 0), ("hi", 2)]  # (question, images)


@pytest.fixture(scope="module", params=["qwen2_vl", "internvl"])
def loaded(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    if request.param == "qwen2_vl":
        path = write_qwen2_vl(root / "ckpt", seed=0)
    else:
        path = write_internvl(root / "ckpt", TinyInternVL(template="internvl2_5"), seed=3)
    return load_vlm(str(path))


def requests(loaded, max_new_tokens: int = 12):
    """(prompt, sampling) of each question, with its images (Qwen2-VL's shift the M-RoPE positions)."""
    out = []
    for i, (question, images) in enumerate(QUESTIONS):
        pictures = [picture(40 + 8 * k, 30, seed=i + k) for k in range(images)]
        out.append(prepare_request(loaded, [(question, None)], pictures, SamplingConfig(max_new_tokens=max_new_tokens)))
    return out


def test_batched_step_matches_the_paddle_path_per_sequence(loaded, monkeypatch):
    model = loaded.model
    batched = BatchedDecoder.for_model(model)
    assert batched is not None
    prompts = [prompt for prompt, _ in requests(loaded)]
    ours, theirs, tokens = [], [], []
    for prompt in prompts:
        pair = [model.make_cache(len(prompt.ids) + 4) for _ in range(2)]
        first = [model.forward(model.embed_prompt(prompt), cache).numpy()[0] for cache in pair]
        ours.append(pair[0])
        theirs.append(pair[1])
        tokens.append(int(np.argmax(first[1])))
    monkeypatch.setenv("MIX_FAST_DECODE", "0")  # the per-sequence oracle: Paddle's ops
    for _ in range(3):
        rows = batched.step(tokens, ours)
        expected = np.stack([model.forward(model.embed_tokens([t]), c).numpy()[0] for t, c in zip(tokens, theirs)])
        np.testing.assert_allclose(rows, expected, atol=1e-4 * max(1.0, np.abs(expected).max()))
        assert [c.offset for c in ours] == [c.offset for c in theirs]
        tokens = [int(t) for t in np.argmax(expected, axis=-1)]


def run_jobs(engine: Engine, jobs_at: list[tuple[int, tuple]]) -> list[list[int]]:
    """Submit each (prompt, cfg) once the engine has run `at` decode steps; the tokens each one got."""
    results = [queue.Queue() for _ in jobs_at]
    for i, (at, (prompt, cfg)) in enumerate(sorted(jobs_at, key=lambda x: x[0])):
        while engine.steps < at:
            threading.Event().wait(0.001)
        engine.submit(Job(prompt, cfg, results[i].put))
    out = []
    for q in results:
        tokens = []
        while (item := q.get(timeout=60)) is not None:
            assert not isinstance(item, Exception), item
            tokens += [item.token] if item.token is not None else []
        out.append(tokens)
    return out


def test_sequences_joining_and_leaving_a_batch_decode_their_solo_tokens(loaded):
    prepared = requests(loaded, max_new_tokens=12)
    prepared[2][1].max_new_tokens = 5  # leaves the batch early
    prepared[1][1].temperature, prepared[1][1].seed = 0.8, 7  # sampled, with its own generator
    solo = [answer(loaded, [(q, None)], [picture(40 + 8 * k, 30, seed=i + k) for k in range(n)],
                   SamplingConfig(max_new_tokens=prepared[i][1].max_new_tokens, temperature=prepared[i][1].temperature,
                                  seed=prepared[i][1].seed)).token_ids
            for i, (q, n) in enumerate(QUESTIONS)]  # fmt: skip
    engine = Engine(loaded.model, max_batch=8).start()
    try:
        got = run_jobs(engine, [(0, prepared[0]), (0, prepared[2]), (3, prepared[1])])  # the second joins at step 3
    finally:
        engine.close()
    order = [0, 2, 1]
    assert [got[order.index(i)] for i in range(3)] == solo
    assert engine.batched_steps > 0  # several sequences went through one step
