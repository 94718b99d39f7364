"""`mix bench infer --concurrency C`: C requests decoded together by `mix serve`'s engine (serve/engine.py:
prefill one at a time, then one batched step per token for all of them), timed per request and in
aggregate, beside one request decoded alone through `mix infer`'s path."""

from __future__ import annotations

import queue
import time
from dataclasses import dataclass
from typing import Callable

from .infer import InferSettings, RunTimes
from .metrics import headline, summary, tokens_per_s


@dataclass
class Round:
    """C requests submitted together: each one's times and tokens, and the decode phase's span."""

    requests: list[RunTimes]
    decode_tokens: int  # tokens after each request's first
    decode_s: float  # from the last request's first token to the last token of all

    @property
    def aggregate_tokens_per_s(self) -> float | None:
        return self.decode_tokens / self.decode_s if self.decode_s > 0 else None


class Recorder:
    """A Job's ``emit``: the worker thread's Steps, each with the time it came, for the bench thread."""

    def __init__(self):
        self.items: queue.Queue = queue.Queue()

    def __call__(self, item) -> None:
        self.items.put((item, time.perf_counter()))

    def collect(self, submitted: float, timeout: float) -> tuple[RunTimes, list[float]]:
        """The request's RunTimes (time to first token from ``submitted``) and each token's arrival."""
        from ..serve.errors import ApiError

        run, stamps, pieces = RunTimes(), [], []
        while (got := self.items.get(timeout=timeout))[0] is not None:
            step, at = got
            if isinstance(step, ApiError):
                raise RuntimeError(f"a concurrent request failed: {step.message}")
            if step.token is not None:
                run.token_ids.append(step.token)
                stamps.append(at)
            pieces.append(step.text)
        run.text = "".join(pieces)
        run.ttft_s = stamps[0] - submitted if stamps else 0.0
        run.token_s = [b - a for a, b in zip(stamps, stamps[1:])]
        run.e2e_s = (stamps[-1] if stamps else time.perf_counter()) - submitted
        return run, stamps


def decode_together(engine, requests: list[tuple[object, object]], timeout: float = 3600.0) -> Round:
    """Submit every (prompt, cfg) of ``requests`` to ``engine`` (a serve.engine.Engine with room for all
    of them) at once and wait for all: the worker takes them in one batch."""
    from ..serve.engine import Job

    recorders = [Recorder() for _ in requests]
    submitted = time.perf_counter()
    engine.submit_all([Job(prompt, cfg, recorder) for (prompt, cfg), recorder in zip(requests, recorders)])
    collected = [recorder.collect(submitted, timeout) for recorder in recorders]
    runs = [run for run, _ in collected]
    firsts = [stamps[0] for _, stamps in collected if stamps]
    lasts = [stamps[-1] for _, stamps in collected if stamps]
    decode_s = max(lasts) - max(firsts) if firsts else 0.0
    return Round(runs, sum(len(run.token_s) for run in runs), decode_s)


def prepared_requests(loaded, settings: InferSettings, count: int) -> list[tuple[object, object]]:
    """``count`` copies of the settings' request, each prepared as the server prepares one (its own
    prompt and sampling settings)."""
    from ..images import load_image
    from ..vlm import prepare_request

    pictures = [load_image(source) for source in settings.images]
    return [prepare_request(loaded, [(settings.question, None)], pictures, settings.sampling()) for _ in range(count)]


def measure_concurrent(loaded, settings: InferSettings, concurrency: int,
                       progress: Callable[[str], None]) -> list[Round]:  # fmt: skip
    """Warm-up rounds (discarded: Paddle builds kernels for the batch's shapes), then ``settings.runs``
    rounds of ``concurrency`` requests through one engine."""
    from ..serve.engine import Engine

    engine = Engine(loaded.model, max_batch=concurrency, max_queue=concurrency).start()
    try:
        for i in range(settings.warmup):
            progress(f"concurrent warm-up {i + 1}/{settings.warmup}")
            decode_together(engine, prepared_requests(loaded, settings, concurrency))
        rounds = []
        for i in range(settings.runs):
            rounds.append(decode_together(engine, prepared_requests(loaded, settings, concurrency)))
            rate = rounds[-1].aggregate_tokens_per_s or 0.0
            progress(f"concurrent run {i + 1}/{settings.runs}: {concurrency} requests, {rate:.2f} tokens/s in all")
    finally:
        engine.close()
    return rounds


def concurrency_metrics(rounds: list[Round], concurrency: int, alone: dict) -> dict:
    """The figures of the concurrent rounds, to add to the single request's ``alone`` metrics: the
    aggregate decode rate and its speedup over one request's, and per request (every request of every
    round) the time to first token, time per output token and end to end."""
    requests = [run for r in rounds for run in r.requests]
    aggregate = summary([r.aggregate_tokens_per_s for r in rounds], digits=2)
    single = headline(alone.get("decode_tokens_per_s"))
    return {
        "concurrency": concurrency,
        "aggregate_tokens_per_s": aggregate,
        "concurrency_speedup": round(aggregate["p50"] / single, 3) if aggregate and single else None,
        "concurrent_ttft_s": summary([run.ttft_s for run in requests]),
        "concurrent_tpot_s": summary([t for run in requests for t in run.token_s], digits=5),
        "concurrent_decode_tokens_per_s": summary([tokens_per_s(run.token_s) for run in requests], digits=2),
        "concurrent_e2e_s": summary([run.e2e_s for run in requests]),
    }


def concurrent_output(rounds: list[Round], alone: list[int]) -> dict:
    """The last round's tokens per request, and how many of them are the tokens decoded alone."""
    tokens = [run.token_ids for run in rounds[-1].requests]
    return {"requests": len(tokens), "same_as_alone": sum(t == alone for t in tokens), "token_ids": tokens}
