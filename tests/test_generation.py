"""The decode loop on a fake numpy model: greedy, sampling, stopping, streaming text, timings."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from helpers import PARITY_TOLERANCE, assert_clear_margins, greedy_with_logits
from mixcli.errors import MixError
from mixcli.generation import SamplingConfig, apply_repetition_penalty, generate, sample_token, stream_generate

# Token id -> bytes; decode joins the bytes, so split UTF-8 characters decode to '\ufffd' as in byte-level BPE.
VOCAB = [b"<eos>", b"Hel", b"lo", b" S", b"TOP", b"un", b"!"]
VOCAB += [b"\xc3", b"\xa9", b"\xe4", b"\xbd", b"\xa0", b" a.STOP.b", b" world"]  # é = c3 a9, 你 = e4 bd a0
EOS, HEL, LO, S, TOP, UN, BANG, E1, E2, C1, C2, C3, INLINE, WORLD = range(len(VOCAB))
PROMPT_IDS = [3, 5, 5, 13]


class Logits:
    """Stands in for a Paddle tensor: only .numpy() is used."""

    def __init__(self, row: np.ndarray):
        self.row = row

    def numpy(self) -> np.ndarray:
        return self.row[None].copy()


class FakeModel:
    """A Decodable whose forward returns row `step` of a logits table, recording how it is driven."""

    def __init__(self, rows: np.ndarray):
        self.rows = np.asarray(rows, dtype=np.float32)
        self.step, self.prompts, self.fed, self.cache_len = 0, 0, [], None

    def embed_prompt(self, prompt):
        self.prompts += 1
        return ("prompt", prompt)

    def embed_tokens(self, ids):
        self.fed.append(list(ids))
        return ("tokens", ids)

    def make_cache(self, max_len):
        self.cache_len = max_len
        return {"owner": self}

    def forward(self, embeds, cache):
        assert cache["owner"] is self and self.step < len(self.rows), "decoded past the end of the script"
        self.step += 1
        return Logits(self.rows[self.step - 1])

    def decode(self, ids):
        pieces = (VOCAB[i] if i < len(VOCAB) else f"<{i}>".encode() for i in ids if i != EOS)
        return b"".join(pieces).decode("utf-8", errors="replace")


def scripted(*tokens: int, vocab: int = len(VOCAB)) -> FakeModel:
    """Greedy decoding of this model yields `tokens` in order (over seeded noise)."""
    rows = np.random.default_rng(0).normal(size=(len(tokens), vocab))
    rows[np.arange(len(tokens)), tokens] += 20.0
    return FakeModel(rows)


def fixed(row: np.ndarray, steps: int = 64) -> FakeModel:
    return FakeModel(np.tile(row, (steps, 1)))


def run(model: FakeModel, **cfg):
    """(pieces streamed through on_text, Generation)."""
    pieces = []
    result = generate(model, "prompt", PROMPT_IDS, SamplingConfig(**cfg), on_text=pieces.append)
    return pieces, result


def test_greedy_picks_argmax_and_feeds_each_token_once():
    rows = np.random.default_rng(1).normal(size=(6, len(VOCAB)))
    model = FakeModel(rows)
    _, result = run(model, max_new_tokens=6)
    assert result.token_ids == [int(i) for i in rows.argmax(-1)]
    assert result.finish_reason == "length"
    assert model.prompts == 1 and model.cache_len == len(PROMPT_IDS) + 6
    assert model.fed == [[t] for t in result.token_ids[:-1]]  # the prompt is never recomputed


def test_stop_token_ends_generation_and_is_not_returned():
    model = scripted(HEL, LO, EOS, WORLD)
    steps = list(stream_generate(model, "p", PROMPT_IDS, SamplingConfig(stop_token_ids=[EOS])))
    assert [s.token for s in steps] == [HEL, LO, None]
    assert steps[-1].finish_reason == "stop" and steps[-1].generated_tokens == 2
    _, result = run(scripted(HEL, LO, EOS, WORLD), stop_token_ids=[EOS])
    assert (result.token_ids, result.text, result.finish_reason) == ([HEL, LO], "Hello", "stop")


def test_max_new_tokens_finishes_with_length():
    _, result = run(scripted(HEL, LO, WORLD, BANG, BANG), max_new_tokens=3)
    assert (result.token_ids, result.text, result.finish_reason) == ([HEL, LO, WORLD], "Hello world", "length")


def test_should_stop_cancels_between_tokens():
    model, cancelled, steps = scripted(HEL, LO, WORLD, BANG, BANG), [False], []
    for step in stream_generate(model, "p", PROMPT_IDS, SamplingConfig(), should_stop=lambda: cancelled[0]):
        steps.append(step)
        cancelled[0] = len(steps) == 2  # a server cancels the request after the second piece
    assert [s.token for s in steps] == [HEL, LO, WORLD] and steps[-1].finish_reason == "cancelled"
    assert model.step == 3
    result = generate(scripted(HEL, LO), "p", PROMPT_IDS, SamplingConfig(), should_stop=lambda: True)
    assert (result.token_ids, result.finish_reason) == ([HEL], "cancelled")


@pytest.mark.parametrize(
    "script, stops, pieces, reason",
    [
        ((HEL, LO, S, TOP, WORLD), ["STOP"], ["Hel", "lo", " "], "stop"),  # stop string split over two tokens
        ((HEL, LO, S, UN, BANG), ["STOP"], ["Hel", "lo", " Sun", "!"], "length"),  # " S" held, then released
        ((HEL, LO, S), ["STOP"], ["Hel", "lo", " S"], "length"),  # held back until the end, then flushed
        ((HEL, S, EOS), ["STOP"], ["Hel", " S"], "stop"),  # a stop token flushes the held text
        ((HEL, INLINE, WORLD), ["STOP"], ["Hel", " a."], "stop"),  # stop string inside one token
        ((HEL, INLINE, WORLD), [".b", "STOP"], ["Hel", " a."], "stop"),  # the earliest stop string wins
        ((E1, E2, C1, C2, C3, BANG), [], ["é", "你", "!"], "length"),  # incomplete UTF-8 is held back
    ],
)
def test_stop_strings_and_held_back_text(script, stops, pieces, reason):
    model = scripted(*script)
    streamed, result = run(model, max_new_tokens=len(script), stop_strings=stops, stop_token_ids=[EOS])
    assert streamed == pieces and result.text == "".join(pieces) and result.finish_reason == reason
    assert "\ufffd" not in result.text
    if reason == "stop" and EOS not in script:
        assert model.step == len(script) - 1  # nothing was decoded after the stop string


def test_streamed_steps_concatenate_to_the_final_text():
    script = (E1, HEL, E2, C1, C2, S, C3, LO, S, UN, BANG, C1)  # ends on an incomplete character
    cfg = SamplingConfig(max_new_tokens=len(script), stop_strings=["STOP"])
    steps = list(stream_generate(scripted(*script), "p", PROMPT_IDS, cfg))
    _, result = run(scripted(*script), max_new_tokens=len(script), stop_strings=["STOP"])
    assert "".join(s.text for s in steps) == result.text == FakeModel([]).decode(list(script))
    assert [s.generated_tokens for s in steps] == list(range(1, len(script) + 1))


def noisy_row(vocab: int = 16, seed: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).normal(scale=1.0, size=vocab)


def test_sampling_is_reproducible_by_seed_and_differs_across_seeds():
    row = noisy_row()
    a = run(fixed(row), max_new_tokens=40, temperature=1.0, seed=0)[1].token_ids
    b = run(fixed(row), max_new_tokens=40, temperature=1.0, seed=0)[1].token_ids
    c = run(fixed(row), max_new_tokens=40, temperature=1.0, seed=1)[1].token_ids
    assert a == b and a != c and len(set(a)) > 3


def test_top_k_1_at_any_temperature_is_greedy():
    rows = np.random.default_rng(2).normal(size=(10, 30))
    greedy = run(FakeModel(rows), max_new_tokens=10)[1].token_ids
    for seed in range(3):
        assert run(FakeModel(rows), max_new_tokens=10, temperature=1.5, top_k=1, seed=seed)[1].token_ids == greedy


def draw(logits: np.ndarray, cfg: SamplingConfig, n: int = 20000) -> np.ndarray:
    rng = np.random.default_rng(0)
    counts = np.bincount([sample_token(logits, cfg, rng) for _ in range(n)], minlength=logits.size)
    return counts / n


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = np.array([0.25, 0.1, 0.5, 0.15])  # sorted: 0.5, 0.25, 0.15, 0.1
    logits = np.log(probs)
    freq = draw(logits, SamplingConfig(temperature=1.0, top_p=0.7))  # 0.5 + 0.25 reaches 0.7
    np.testing.assert_allclose(freq, [1 / 3, 0, 2 / 3, 0], atol=0.02)
    freq = draw(logits, SamplingConfig(temperature=1.0, top_p=0.8))  # needs 0.15 as well
    np.testing.assert_allclose(freq, [0.25 / 0.9, 0, 0.5 / 0.9, 0.15 / 0.9], atol=0.02)
    assert draw(logits, SamplingConfig(temperature=1.0, top_p=0.3), n=500)[2] == 1.0


def test_temperature_top_k_top_p_match_transformers_warpers():
    logits = noisy_row(12, seed=7).astype(np.float32) * 2
    cfg = SamplingConfig(temperature=0.8, top_k=6, top_p=0.85)
    scores = torch.tensor(logits[None])
    for warper in (TemperatureLogitsWarper(0.8), TopKLogitsWarper(6), TopPLogitsWarper(0.85)):
        scores = warper(None, scores)
    expected = torch.softmax(scores, -1)[0].numpy()
    freq = draw(logits, cfg)
    np.testing.assert_allclose(freq, expected, atol=0.015)
    assert np.all(freq[expected == 0] == 0)


@pytest.mark.parametrize("penalty", [1.3, 0.7])
def test_repetition_penalty_matches_transformers(penalty):
    rng = np.random.default_rng(3)
    logits = rng.normal(scale=3, size=40).astype(np.float32)
    seen = [int(i) for i in rng.integers(0, 40, size=25)]  # with repeats
    expected = RepetitionPenaltyLogitsProcessor(penalty)(torch.tensor([seen]), torch.tensor(logits[None]))[0].numpy()
    np.testing.assert_allclose(apply_repetition_penalty(logits, seen, penalty), expected, rtol=1e-6)
    assert apply_repetition_penalty(logits, seen, 1.0) is logits


def test_repetition_penalty_in_the_loop_counts_prompt_and_generated_tokens():
    row = np.linspace(2.0, 1.0, len(VOCAB)) + np.random.default_rng(4).normal(scale=0.01, size=len(VOCAB))
    processor, ids = RepetitionPenaltyLogitsProcessor(1.5), list(PROMPT_IDS)
    for _ in range(8):
        scores = processor(torch.tensor([ids]), torch.tensor(row[None], dtype=torch.float32))
        ids.append(int(scores.argmax()))
    got = run(fixed(row), max_new_tokens=8, repetition_penalty=1.5)[1].token_ids
    assert got == ids[len(PROMPT_IDS):]
    assert len(set(got)) > 1  # without the penalty greedy would repeat one token


@pytest.mark.parametrize(
    "field, value",
    [
        ("max_new_tokens", 0),
        ("temperature", -0.1),
        ("temperature", math.nan),
        ("top_p", 0.0),
        ("top_p", 1.01),
        ("top_p", math.nan),
        ("top_k", -1),
        ("repetition_penalty", 0.0),
        ("repetition_penalty", math.nan),
    ],
)
def test_validate_rejects_bad_values(field, value):
    cfg = SamplingConfig(**{field: value})
    with pytest.raises(MixError) as err:
        cfg.validate()
    assert err.value.fix
    model = scripted(HEL)
    with pytest.raises(MixError):
        list(stream_generate(model, "p", PROMPT_IDS, cfg))
    assert model.prompts == 0  # rejected before any model work


def test_generation_to_dict_has_the_contract_keys():
    _, result = run(scripted(HEL, LO, WORLD, EOS), stop_token_ids=[EOS])
    record = json.loads(json.dumps(result.to_dict()))
    assert record["text"] == "Hello world" and record["token_ids"] == [HEL, LO, WORLD]
    assert record["prompt_token_ids"] == PROMPT_IDS and record["prompt_tokens"] == len(PROMPT_IDS)
    assert record["generated_tokens"] == 3 and record["finish_reason"] == "stop"
    assert record["timings"]["ttft_s"] >= 0 and record["timings"]["decode_tokens_per_s"] > 0


def test_greedy_with_logits_keeps_each_chosen_steps_row():
    """The test helper behind every margin check: one row per generated token, plus the stop step."""
    model = scripted(HEL, LO, EOS, WORLD)
    result, steps = greedy_with_logits(model, SimpleNamespace(ids=PROMPT_IDS), 8, [EOS])
    assert result.token_ids == [HEL, LO]
    np.testing.assert_array_equal(steps, model.rows[:3])


def test_clear_margins_refuse_a_near_tie():
    rows = np.random.default_rng(0).normal(size=(3, 8))
    rows[:, 2] = rows.max(-1) + 1.0
    assert_clear_margins(rows)
    rows[1, 5] = rows[1, 2] - 2 * PARITY_TOLERANCE * np.abs(rows).max()  # within reach of rounding
    with pytest.raises(AssertionError, match="step 1: "):
        assert_clear_margins(rows)
