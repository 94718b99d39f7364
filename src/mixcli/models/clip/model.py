"""CLIP (transformers' CLIPModel layout) in Paddle, and the model record every contrastive family loads into:
L2-normalised image and text embeddings, and label probabilities from them as the family's reference computes."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import paddle
from paddle import nn
from PIL import Image

from ...diffusion.clip import CLIPTextTransformer, CLIPTokenizer, eos_positions
from ...errors import CheckpointError
from ...layers import build_for_inference
from ...layers.linear import Linear
from ...weights import open_checkpoint, rename
from .config import CLIPConfig
from .processing import CLIP_DEFAULTS, ImageProcessor
from .vision import PooledVisionTower


def l2_normalised(x: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm, as the references normalise before the product."""
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


class ContrastiveModel:
    """A loaded contrastive checkpoint. ``net`` provides ``image_features(pixels)``, ``logit_scale`` (and SigLIP's
    ``logit_bias``); a family subclass provides ``text_features`` for a list of texts."""

    family = "CLIP"
    probability = "softmax"  # over the labels of an image; SigLIP: "sigmoid", each label on its own

    def __init__(self, net, tokenizer, processor: ImageProcessor, path: Path):
        self.net, self.tokenizer, self.processor, self.path = net, tokenizer, processor, Path(path)
        self.dtype = net.logit_scale.dtype

    def pixel_values(self, images: list[Image.Image]) -> np.ndarray:
        """(N, 3, H, W) float32, as the family's image processor makes them."""
        return self.processor.batch(images)

    def image_embeds(self, images: list[Image.Image]) -> np.ndarray:
        """(N, P) L2-normalised float32 embeddings of RGB images."""
        return self.embed_pixels(self.pixel_values(images))

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        with paddle.no_grad():
            out = self.net.image_features(paddle.to_tensor(pixels).astype(self.dtype))
        return l2_normalised(out.astype("float32").numpy())

    def text_embeds(self, texts: list[str]) -> np.ndarray:
        """(M, P) L2-normalised float32 embeddings of texts."""
        with paddle.no_grad():
            out = self.text_features(list(texts))
        return l2_normalised(out.astype("float32").numpy())

    def text_features(self, texts: list[str]) -> paddle.Tensor:
        raise NotImplementedError

    def logits(self, image_embeds: np.ndarray, text_embeds: np.ndarray) -> np.ndarray:
        """(N, M) image-text logits: cosine x exp(logit_scale) (+ logit_bias for SigLIP)."""
        scale = np.float32(np.exp(float(self.net.logit_scale.astype("float32").numpy().reshape(-1)[0])))
        bias = getattr(self.net, "logit_bias", None)
        shift = np.float32(0) if bias is None else np.float32(bias.astype("float32").numpy().reshape(-1)[0])
        return (image_embeds @ text_embeds.T) * scale + shift

    def probs(self, logits: np.ndarray) -> np.ndarray:
        """Label probabilities of (N, M) logits: a softmax over each image's labels, or SigLIP's sigmoid."""
        if self.probability == "sigmoid":
            return 1 / (1 + np.exp(-logits))
        shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return shifted / shifted.sum(axis=-1, keepdims=True)


class CLIPNet(nn.Layer):
    """transformers' CLIPModel: text_model, vision_model, the two projections and logit_scale."""

    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.config = cfg
        self.text_model = CLIPTextTransformer(cfg.text)
        self.vision_model = PooledVisionTower(cfg.vision, clip=True)
        self.text_projection = Linear(cfg.text.hidden_size, cfg.projection_dim, bias_attr=False)
        self.visual_projection = Linear(cfg.vision.hidden_size, cfg.projection_dim, bias_attr=False)
        self.logit_scale = self.create_parameter([])

    def image_features(self, pixel_values: paddle.Tensor) -> paddle.Tensor:
        """(N, C, H, W) -> (N, P) projected, not normalised."""
        return self.visual_projection(self.vision_model.pooled(pixel_values))

    def text_features(self, input_ids: paddle.Tensor) -> paddle.Tensor:
        """(B, T) ids -> (B, P): the final-normed state at the EOS position, projected."""
        body = self.text_model
        last = body.final_layer_norm(body.encoder(body.embeddings(input_ids)))  # (B, T, H)
        rows = paddle.arange(input_ids.shape[0])
        return self.text_projection(last[rows, eos_positions(input_ids, self.config.text.eos_token_id)])


class CLIP(ContrastiveModel):
    def text_features(self, texts: list[str]) -> paddle.Tensor:
        ids = self.tokenizer(texts)  # (B, model_max_length), padded as the processor pads
        # Causal attention: the columns after the last pooled position change nothing that is pooled.
        length = int(eos_positions(paddle.to_tensor(ids), self.net.config.text.eos_token_id).max()) + 1
        return self.net.text_features(paddle.to_tensor(ids[:, :length]))


# Published files carry position_ids buffers (positions are always 0..T-1 here).
NAME_RULES = [(r"^(text_model|vision_model)\.embeddings\.position_ids$", None)]


def sanitize(weights: Mapping) -> Mapping:
    """Checkpoint names -> this module's names. Pure and idempotent."""
    return rename(weights, NAME_RULES)


def tokenizer_folder(path: Path) -> Path:
    if not any((path / name).is_file() for name in ("vocab.json", "tokenizer.json")):
        raise CheckpointError(f"{path} has no CLIP tokenizer (vocab.json + merges.txt or tokenizer.json)",
                              "re-download it: mix download MODEL")  # fmt: skip
    return path


def load(path: Path, config: dict, dtype: str = "float32", allow_pickle: bool = False) -> CLIP:
    """A CLIPModel checkpoint folder (config.json, weights, tokenizer, preprocessor_config.json)."""
    cfg = CLIPConfig.from_dict(config)
    weights = sanitize(open_checkpoint(path, allow_pickle=allow_pickle))
    net = build_for_inference(lambda: CLIPNet(cfg), weights, dtype)
    tokenizer = CLIPTokenizer.from_dir(tokenizer_folder(Path(path)))
    return CLIP(net, tokenizer, ImageProcessor.from_dir(path, CLIP_DEFAULTS), path)
