"""`--random-weights`: a checkpoint with an alias's real configuration and random weights, so any machine
can benchmark the real architecture without downloading it. The configurations ship in bench/configs/<alias>/
(the published config.json, preprocessor and tokenizer settings); the weights are written once to the cache
in the authors' layout and names; the tokenizer is a stand-in with the real special tokens at their ids.

The stand-in splits text as Qwen2's tokenizer does (its pre-tokenizer regex) and gives each piece one id:
English words are single tokens in Qwen2's vocabulary, so the built-in question and the templates' English
get the real length; CJK text (InternVL2's Chinese system prompt) is one token per run of letters, fewer
than the real tokenizer's, and unknown words share one id.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..errors import MixError

CONFIGS = Path(__file__).resolve().parent / "configs"
# Qwen2's pre-tokenizer (transformers' Qwen2Tokenizer PRETOKENIZE_REGEX).
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
    r"\s*[\r\n]+|\s+(?!\S)|\s+"
)
WORDS = "You are a helpful assistant. Describe the image in detail. What is in the picture? system user assistant"
SHARD_BYTES = 2 << 30


def available(pipelines: bool = False) -> list[str]:
    """The aliases with shipped configurations: models (config.json), or pipelines (model_index.json)."""
    marker = "model_index.json" if pipelines else "config.json"
    return sorted(p.name for p in CONFIGS.iterdir() if (p / marker).is_file())


def random_checkpoint(alias: str, progress: Callable[[str], None] = lambda line: None, pipeline: bool = False) -> Path:
    """The cached random checkpoint of ``alias`` (a diffusers pipeline folder with ``pipeline``), written
    first if it is not there yet."""
    from ..paths import mix_home

    source = CONFIGS / alias
    if alias not in available(pipeline):
        raise MixError(f"--random-weights has no configuration for '{alias}'", f"it has: {', '.join(available(pipeline))}")
    folder = mix_home() / "bench" / "random" / alias
    if pipeline:
        from .random_pipeline import pipeline_bytes, pipeline_shapes, write_pipeline

        if not (folder / "model_index.json").is_file():
            shapes = pipeline_shapes(source)
            _write_once(alias, folder, pipeline_bytes(shapes), lambda staging: write_pipeline(staging, source, shapes, progress), progress)
        return folder
    if not (folder / "model.safetensors.index.json").is_file():
        config = json.loads((source / "config.json").read_text(encoding="utf-8"))
        shapes = authors_shapes(config)
        nbytes = 4 * sum(int(np.prod(s)) for s in shapes.values())
        _write_once(alias, folder, nbytes, lambda staging: write_folder(staging, source, config, shapes), progress)
    return folder


def _write_once(alias: str, folder: Path, nbytes: int, write: Callable[[Path], None], progress: Callable[[str], None]) -> None:
    """Write ``folder`` through a staging folder renamed at the end, after checking the disk has ``nbytes``."""
    check_free_space(folder.parent, nbytes)
    progress(f"writing random weights for {alias} once: {nbytes / 1e9:.1f} GB in {folder}")
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    write(staging)
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)


def check_free_space(folder: Path, nbytes: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if free < nbytes * 1.05 + (1 << 30):
        raise MixError(f"random weights need {nbytes / 1e9:.1f} GB but {folder} has {free / 1e9:.1f} GB free",
                       "free some space, or point MIX_HOME at a larger disk")  # fmt: skip


def write_folder(folder: Path, source: Path, config: dict, shapes: dict[str, tuple]) -> None:
    folder.mkdir(parents=True)
    for file in source.iterdir():
        shutil.copy(file, folder / file.name)
    write_stand_in_tokenizer(folder, json.loads((source / "tokenizer_config.json").read_text(encoding="utf-8")))
    write_shards(folder, shapes)


def write_shards(folder: Path, shapes: dict[str, tuple], seed: int = 0) -> None:
    """float32 safetensors shards of about SHARD_BYTES with their index, one shard in memory at a time."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    groups = list(_shard_groups(shapes))
    weight_map = {}
    for i, names in enumerate(groups, 1):
        file = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        save_file({name: random_tensor(name, shapes[name], rng) for name in names}, str(folder / file), {"format": "pt"})
        weight_map |= dict.fromkeys(names, file)
    total = 4 * sum(int(np.prod(s)) for s in shapes.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=1), encoding="utf-8")


def _shard_groups(shapes: dict[str, tuple]) -> Iterator[list[str]]:
    group, size = [], 0
    for name, shape in shapes.items():
        if group and size + 4 * int(np.prod(shape)) > SHARD_BYTES:
            yield group
            group, size = [], 0
        group.append(name)
        size += 4 * int(np.prod(shape))
    if group:
        yield group


def random_tensor(name: str, shape: tuple, rng: np.random.Generator) -> np.ndarray:
    """Values at scales that keep activations O(1): matrices ~ N(0, 1/fan_in), norm weights and layer
    scales near 1, biases small."""
    if len(shape) == 1:
        near_one = "norm" in name or name.rsplit(".", 1)[-1] in ("ls1", "ls2") or name.endswith("mlp1.0.weight")
        base = 1.0 if near_one and name.endswith(("weight", "ls1", "ls2")) else 0.0
        return (base + 0.02 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
    fan_in = int(np.prod(shape[1:])) if "embed" not in name else 1
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(fan_in**-0.5)


# ---- the authors' tensor names and shapes, from config.json ---------------------------------------


def authors_shapes(config: dict) -> dict[str, tuple]:
    """Every tensor of the published checkpoint of this configuration, in torch layout."""
    model_type = config.get("model_type")
    if model_type == "internvl_chat" and config["llm_config"]["architectures"][0] == "Qwen2ForCausalLM":
        return _internvl_shapes(config)
    if model_type == "qwen2_vl":
        return _qwen2_vl_shapes(config)
    raise MixError(f"--random-weights cannot lay out '{model_type}' checkpoints yet", f"use one of: {', '.join(available())}")


def _qwen2_lm(prefix: str, c: dict, head: str | None) -> dict[str, tuple]:
    """Qwen2's decoder under ``prefix`` ("model." or "language_model.model."), its lm_head as ``head``."""
    h, f, hd = c["hidden_size"], c["intermediate_size"], c["hidden_size"] // c["num_attention_heads"]
    q, kv = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd
    out = {f"{prefix}embed_tokens.weight": (c["vocab_size"], h), f"{prefix}norm.weight": (h,)}
    for i in range(c["num_hidden_layers"]):
        p = f"{prefix}layers.{i}."
        out |= {p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
                p + "self_attn.q_proj.weight": (q, h), p + "self_attn.q_proj.bias": (q,),
                p + "self_attn.k_proj.weight": (kv, h), p + "self_attn.k_proj.bias": (kv,),
                p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.v_proj.bias": (kv,),
                p + "self_attn.o_proj.weight": (h, q), p + "mlp.gate_proj.weight": (f, h),
                p + "mlp.up_proj.weight": (f, h), p + "mlp.down_proj.weight": (h, f)}  # fmt: skip
    if head and not c.get("tie_word_embeddings", False):
        out[head] = (c["vocab_size"], h)
    return out


def _internvl_shapes(config: dict) -> dict[str, tuple]:
    """OpenGVLab's internvl_chat names: vision_model.*, mlp1.{0,1,3}.*, language_model.*."""
    v, llm = config["vision_config"], config["llm_config"]
    d, f, patch = v["hidden_size"], v["intermediate_size"], v["patch_size"]
    grid = (config.get("force_image_size") or v["image_size"]) // patch
    out = {"vision_model.embeddings.class_embedding": (1, 1, d),
           "vision_model.embeddings.patch_embedding.weight": (d, 3, patch, patch),
           "vision_model.embeddings.patch_embedding.bias": (d,),
           "vision_model.embeddings.position_embedding": (1, grid * grid + 1, d)}  # fmt: skip
    for i in range(v["num_hidden_layers"]):
        p = f"vision_model.encoder.layers.{i}."
        out |= {p + "attn.qkv.weight": (3 * d, d), p + "attn.proj.weight": (d, d), p + "attn.proj.bias": (d,),
                p + "mlp.fc1.weight": (f, d), p + "mlp.fc1.bias": (f,), p + "mlp.fc2.weight": (d, f),
                p + "mlp.fc2.bias": (d,), p + "ls1": (d,), p + "ls2": (d,), p + "norm1.weight": (d,),
                p + "norm2.weight": (d,)}  # fmt: skip
        out |= {p + "attn.qkv.bias": (3 * d,)} if v.get("qkv_bias", True) else {}
        out |= {p + "norm1.bias": (d,), p + "norm2.bias": (d,)} if v.get("norm_type") == "layer_norm" else {}
        out |= {p + "attn.q_norm.weight": (d,), p + "attn.k_norm.weight": (d,)} if v.get("qk_normalization") else {}
    d_in, h = d * int(1 / config["downsample_ratio"]) ** 2, llm["hidden_size"]
    out |= {"mlp1.0.weight": (d_in,), "mlp1.0.bias": (d_in,), "mlp1.1.weight": (h, d_in), "mlp1.1.bias": (h,),
            "mlp1.3.weight": (h, h), "mlp1.3.bias": (h,)}  # fmt: skip
    return out | _qwen2_lm("language_model.model.", llm, "language_model.lm_head.weight")


def _qwen2_vl_shapes(config: dict) -> dict[str, tuple]:
    """Qwen's published names: visual.* and model.* / lm_head.*."""
    v = config["vision_config"]
    e, m, t, p = v["embed_dim"], v["embed_dim"] * v["mlp_ratio"], v["temporal_patch_size"], v["patch_size"]
    merged = e * v["spatial_merge_size"] ** 2
    out = {"visual.patch_embed.proj.weight": (e, v["in_chans"], t, p, p)}
    for i in range(v["depth"]):
        b = f"visual.blocks.{i}."
        out |= {b + "norm1.weight": (e,), b + "norm1.bias": (e,), b + "norm2.weight": (e,), b + "norm2.bias": (e,),
                b + "attn.qkv.weight": (3 * e, e), b + "attn.qkv.bias": (3 * e,), b + "attn.proj.weight": (e, e),
                b + "attn.proj.bias": (e,), b + "mlp.fc1.weight": (m, e), b + "mlp.fc1.bias": (m,),
                b + "mlp.fc2.weight": (e, m), b + "mlp.fc2.bias": (e,)}  # fmt: skip
    out |= {"visual.merger.ln_q.weight": (e,), "visual.merger.ln_q.bias": (e,),
            "visual.merger.mlp.0.weight": (merged, merged), "visual.merger.mlp.0.bias": (merged,),
            "visual.merger.mlp.2.weight": (v["hidden_size"], merged), "visual.merger.mlp.2.bias": (v["hidden_size"],)}  # fmt: skip
    return out | _qwen2_lm("model.", config, "lm_head.weight")


# ---- the tokenizer stand-in --------------------------------------------------------------------


def write_stand_in_tokenizer(folder: Path, tokenizer_config: dict) -> None:
    """tokenizer.json: Qwen2's split, one id per piece (WORDS' pieces distinct, the rest one unknown id),
    the special tokens of tokenizer_config.json at their real ids."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers

    specials = {int(i): t["content"] for i, t in tokenizer_config["added_tokens_decoder"].items()}
    split = pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False)
    pieces = [piece for piece, _ in split.pre_tokenize_str(WORDS)] + ["\n", "<unk>"]
    tokens = [f"<|t{i}|>" for i in range(min(specials))]
    tokens[: len(pieces)] = dict.fromkeys(pieces)
    vocab = {token: i for i, token in enumerate(tokens)} | {content: i for i, content in specials.items()}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = split
    tok.add_special_tokens(list(specials.values()))
    tok.save(str(folder / "tokenizer.json"))
