"""Splicing vision features into a language model's token embeddings."""

from __future__ import annotations

import numpy as np
import paddle


def place_features(embeds: paddle.Tensor, ids, token_id: int, features: paddle.Tensor) -> paddle.Tensor:
    """(1, T, H) embeddings with the rows of every ``token_id`` position replaced, in order, by the
    (N, H) features (the placeholder tokens each family expands an image into)."""
    positions = np.nonzero(np.asarray(ids) == token_id)[0]
    if len(positions) != features.shape[0]:
        raise ValueError(f"{len(positions)} placeholder tokens for {features.shape[0]} vision features")
    index = paddle.to_tensor(positions.astype(np.int64))
    return paddle.scatter(embeds[0], index, features, overwrite=True)[None]
