"""The decode worker: one thread owns the model; requests wait in a bounded queue, join the running batch
between steps (their prefill and vision encoding run one at a time), decode together and leave when
they finish (continuous batching). Each sequence samples and stops through generation.TokenPicker, the
decode loop's own per-sequence half, so its tokens are what `mix infer` gives it."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from ..errors import MixError
from ..generation import SamplingConfig, Step, TokenPicker
from .batching import BatchedDecoder
from .errors import ApiError


class QueueFull(ApiError):
    def __init__(self, waiting: int):
        super().__init__(429, f"the server's queue is full ({waiting} requests waiting); retry shortly",
                         "rate_limit_error", headers={"Retry-After": "1"})  # fmt: skip


@dataclass
class Job:
    """One request to decode. ``emit`` receives each Step, then None when done, or an ApiError;
    it must be safe to call from the worker thread."""

    prompt: object  # what model.prepare made, with .ids
    cfg: SamplingConfig  # validated, with the model's stop tokens (vlm.prepare_request)
    emit: Callable[[object], None]
    deadline: float | None = None  # time.monotonic() after which it is cancelled
    cancelled: threading.Event = field(default_factory=threading.Event)
    timed_out: bool = False
    checked_at: float = 0.0  # when the handler last asked whether its client is still there

    def should_stop(self) -> bool:
        if self.deadline is not None and time.monotonic() > self.deadline:
            self.timed_out = True
        return self.cancelled.is_set() or self.timed_out


@dataclass
class Sequence:
    job: Job
    cache: object
    picker: TokenPicker
    last: int | None = None  # the token to feed next


class Engine:
    """Runs Jobs on one loaded vision-language model: at most ``max_batch`` decoding together and
    ``max_queue`` waiting; more get QueueFull (429)."""

    def __init__(self, model, max_batch: int = 8, max_queue: int = 16):
        self.model, self.max_batch, self.max_queue = model, max_batch, max_queue
        self.batched = BatchedDecoder.for_model(model)
        self.waiting: deque[Job] = deque()
        self.active: list[Sequence] = []
        self.wake = threading.Condition()
        self.closing = False
        self.drain_deadline: float | None = None
        self.steps = 0  # decode steps run
        self.batched_steps = 0  # of which several sequences shared one pass over the weights
        self.thread = threading.Thread(target=self._run, name="mix-decode", daemon=True)

    def start(self) -> "Engine":
        self.thread.start()
        return self

    def stats(self) -> dict:
        return {"running": len(self.active), "waiting": len(self.waiting)}

    def check_room(self) -> None:
        """Refuse early (before any media is read) when the queue is full or the server is stopping."""
        if self.drain_deadline is not None or self.closing:
            raise ApiError(503, "the server is shutting down", "server_error")
        if len(self.waiting) >= self.max_queue:
            raise QueueFull(len(self.waiting))

    def submit(self, job: Job) -> None:
        with self.wake:
            self.check_room()
            self.waiting.append(job)
            self.wake.notify()

    def submit_all(self, jobs: list[Job]) -> None:
        """Queue ``jobs`` at once, so that the worker takes them into one batch (as far as it has room)."""
        with self.wake:
            self.check_room()
            if len(self.waiting) + len(jobs) > self.max_queue:
                raise QueueFull(len(self.waiting))
            self.waiting.extend(jobs)
            self.wake.notify()

    def drain(self, seconds: float) -> None:
        """Stop taking requests: waiting ones are refused, running ones get ``seconds`` to finish."""
        with self.wake:
            self.drain_deadline = time.monotonic() + seconds
            while self.waiting:
                self.waiting.popleft().emit(ApiError(503, "the server is shutting down", "server_error"))
            self.wake.notify()

    def close(self, timeout: float = 5.0) -> None:
        with self.wake:
            self.closing = True
            self.wake.notify()
        if self.thread.is_alive():
            self.thread.join(timeout)

    # --- the worker thread ----------------------------------------------------------------------

    def _run(self) -> None:
        from ..runtime import import_paddle, math_threads

        import_paddle().base.core.set_num_threads(math_threads())  # thread settings may be per thread
        while True:
            with self.wake:
                while not self.closing and not self.waiting and not self.active:
                    self.wake.wait()
                if self.closing:
                    break
                joining = self._take_waiting()
            for job in joining:
                self._start(job)
            if self.active:
                self._step()
        for seq in self.active:
            seq.job.emit(ApiError(503, "the server is shutting down", "server_error"))

    def _take_waiting(self) -> list[Job]:
        room = self.max_batch - len(self.active)
        return [self.waiting.popleft() for _ in range(min(room, len(self.waiting)))]

    def _start(self, job: Job) -> None:
        """Prefill one request and pick its first token."""
        if job.should_stop():
            return job.emit(None)
        model = self.model
        try:
            picker = TokenPicker(model.decode, job.prompt.ids, job.cfg, lambda: job.should_stop() or self._draining())
            cache = model.make_cache(len(job.prompt.ids) + job.cfg.max_new_tokens)
            logits = model.forward(model.embed_prompt(job.prompt), cache).numpy()[0]
        except MixError as e:
            return job.emit(ApiError(400, str(e)))
        except Exception as e:  # noqa: BLE001 - one failed request must not stop the server
            return job.emit(ApiError(500, f"{type(e).__name__}: {e}", "server_error"))
        seq = Sequence(job, cache, picker)
        if self._advance(seq, logits):
            self.active.append(seq)

    def _step(self) -> None:
        """One decode step for every running sequence; finished ones leave."""
        seqs, model = self.active, self.model
        try:
            if len(seqs) > 1 and self.batched is not None:
                rows = self.batched.step([s.last for s in seqs], [s.cache for s in seqs])
                self.batched_steps += 1
            else:  # the decode loop's own path (and the only one where the NumPy step does not run)
                rows = [model.forward(model.embed_tokens([s.last]), s.cache).numpy()[0] for s in seqs]
        except Exception as e:  # noqa: BLE001
            for seq in seqs:
                seq.job.emit(ApiError(500, f"{type(e).__name__}: {e}", "server_error"))
            self.active = []
            return
        self.steps += 1
        self.active = [seq for seq, row in zip(seqs, rows) if self._advance(seq, row)]

    def _advance(self, seq: Sequence, logits) -> bool:
        """Pick the next token from ``logits`` and send it; whether the sequence goes on."""
        step: Step = seq.picker.pick(logits)
        seq.job.emit(step)
        if step.finish_reason:
            seq.job.emit(None)
            return False
        seq.last = step.token
        return True

    def _draining(self) -> bool:
        return self.drain_deadline is not None and time.monotonic() > self.drain_deadline
