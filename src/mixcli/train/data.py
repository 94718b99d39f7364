"""Training rows as token ids and loss labels: read through datacopilot (every schema and format it
reads), checked as `datacopilot validate` checks them, tokenized through the model's own chat template.

Labels are the assistant tokens plus the end-of-turn token that closes each assistant turn; everything
else is IGNORE. A pre-flight pass builds every sample before the first step, so a bad row or one over
--max-length is reported before any training time is spent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..datacopilot.dataset import MMDataset
from ..datacopilot.images import is_url, resolve
from ..datacopilot.schema import IMAGE_TOKEN, to_canonical
from ..datacopilot.validate import check_record
from ..errors import InputError, MixError

IGNORE = -100  # the label of a position the loss skips (torch's CrossEntropyLoss ignore_index)


@dataclass
class Sample:
    """One training row, tokenized: where it came from, its images (paths) and its ids with labels."""

    source: str  # "FILE row N (id X)", for messages
    images: list[Path]
    ids: np.ndarray  # (T,) int64
    labels: np.ndarray  # (T,) int64, IGNORE outside the learned tokens

    @property
    def label_count(self) -> int:
        """Tokens the loss learns: positions t whose next token is a label."""
        return int((self.labels[1:] != IGNORE).sum())


@dataclass
class Preflight:
    """What the pre-flight pass found."""

    samples: list[Sample] = field(default_factory=list)
    bad: list[str] = field(default_factory=list)  # "source: defect" of each bad row (with --skip-bad)
    too_long: list[tuple[int, str]] = field(default_factory=list)  # (tokens, source)
    rows: int = 0

    @property
    def tokens(self) -> int:
        return sum(len(s.ids) for s in self.samples)


class RowError(InputError):
    """A training row that cannot be used; names the row and its defect."""


def messages_of(turns: list[dict]) -> list[dict]:
    return [{"role": t["role"], "text": t["text"]} for t in turns]


def label_spans(model, messages: list[dict], image_tokens: list[int], full: list[int]) -> list[tuple[int, int]]:
    """[start, end) token ranges of each assistant turn and the end-of-turn token closing it: what the
    prompt up to the turn's answer ends at, to where the conversation through the answer puts its
    end-of-turn token. Both renders must be prefixes of the whole conversation's tokens."""
    eot = model.tokenizer.token_id(model.end_of_turn) if model.end_of_turn else None
    spans, seen = [], 0
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            seen += message["text"].count(IMAGE_TOKEN)
            continue
        before = model.conversation_ids(messages[:k], image_tokens[:seen], True)
        through = model.conversation_ids(messages[: k + 1], image_tokens[:seen], False)
        if full[: len(before)] != before or full[: len(through)] != through:
            raise MixError(f"assistant turn {k + 1} tokenizes differently inside the whole conversation",
                           "the chat template changes earlier turns; report it with the row")
        closing = [i for i in range(len(before), len(through)) if through[i] == eot]
        spans.append((len(before), closing[-1] + 1 if closing else len(through)))
    return spans


def encode(model, messages: list[dict], image_tokens: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(ids, labels) of a conversation whose images take ``image_tokens`` placeholders each."""
    full = model.conversation_ids(messages, image_tokens, False)
    labels = np.full(len(full), IGNORE, dtype=np.int64)
    ids = np.asarray(full, dtype=np.int64)
    for start, end in label_spans(model, messages, image_tokens, full):
        labels[start:end] = ids[start:end]
    return ids, labels


def _source(path: Path, rec, data) -> str:
    row_id = data.get("id") if isinstance(data, dict) else None
    return f"{path.name} row {rec.row}" + (f" (id {row_id})" if row_id is not None else "")


def build_sample(model, rec, path: Path) -> Sample:
    """One record as a Sample; RowError naming the row and its first defect."""
    source = _source(path, rec, rec.data)
    report = check_record(rec, rec.root or path.parent, "open")
    if not report.ok:
        raise RowError(f"{source}: {report.errors[0]}", "fix the row, or pass --skip-bad to leave bad rows out")
    canon = to_canonical(rec.data, report.schema)
    urls = [ref for ref in canon["images"] if is_url(ref)]
    if urls:
        raise RowError(f"{source}: image is a URL, which finetune does not fetch: {urls[0]}",
                       "download the images and refer to local files")
    from ..images import load_image

    images = [resolve(ref, rec.root or path.parent) for ref in canon["images"]]
    try:
        tokens = [model.image_tokens(load_image(p)) for p in images]
        ids, labels = encode(model, messages_of(canon["turns"]), tokens)
    except MixError as e:
        raise RowError(f"{source}: {e.problem}", "fix the row, or pass --skip-bad to leave bad rows out") from e
    return Sample(source, images, ids, labels)


def preflight(model, paths: list[str | Path], max_length: int, skip_bad: bool = False,
              on_row: Callable[[], None] | None = None) -> Preflight:  # fmt: skip
    """Every row of the files checked and tokenized; rows over max_length counted and left out."""
    out = Preflight()
    for path in map(Path, paths):
        for rec in MMDataset.open(path).records():
            out.rows += 1
            if on_row:
                on_row()
            try:
                sample = build_sample(model, rec, path)
            except RowError as e:
                if not skip_bad:
                    raise
                out.bad.append(e.problem)
                continue
            if len(sample.ids) > max_length:
                out.too_long.append((len(sample.ids), sample.source))
            elif sample.label_count == 0:
                out.bad.append(f"{sample.source}: no assistant tokens to learn")
            else:
                out.samples.append(sample)
    return out


def check_usable(found: Preflight, what: str, max_length: int) -> None:
    """An error when nothing is left to train on."""
    if found.samples:
        return
    if found.rows == 0:
        raise MixError(f"the {what} has no rows", "pass a dataset with at least one conversation")
    if found.too_long:
        raise MixError(f"every row of the {what} is longer than --max-length {max_length} tokens "
                       f"(the longest: {max(n for n, _ in found.too_long)})", "raise --max-length or lower --max-pixels")
    raise MixError(f"no usable rows in the {what} ({len(found.bad)} bad)", "fix the rows listed above")


def split_eval(samples: list[Sample], ratio: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """(train, eval): a seeded random ``ratio`` of the samples held out (at least one when ratio > 0)."""
    if ratio <= 0:
        return samples, []
    order = np.random.default_rng(seed).permutation(len(samples))
    n = min(len(samples) - 1, max(1, round(ratio * len(samples))))
    held = set(order[:n].tolist())
    return [s for i, s in enumerate(samples) if i not in held], [s for i, s in enumerate(samples) if i in held]


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The sample order of one epoch: a permutation fixed by the seed and the epoch (so resume replays it)."""
    return np.random.default_rng([seed, epoch]).permutation(n)
