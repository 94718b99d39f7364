"""Contrastive models: image embeddings per second of the real CLIP ViT-B/32 and ViT-L/14 vision configurations
(random weights), mix against transformers on the CPU at batch 32, and the semantic-dedup search over 100,000 /
1,000,000 unit embeddings (time and peak memory of the blocked NumPy search).

    MIX_BENCH_CLIP=b32 MIX_BENCH_BATCH=32 pytest benchmarks/bench_contrastive.py --benchmark-only -s
"""

from __future__ import annotations

import os
import resource
import time

import numpy as np
import pytest

BATCH = int(os.environ.get("MIX_BENCH_BATCH", "32"))
RUNS = int(os.environ.get("MIX_BENCH_RUNS", "3"))
# The published vision configs (openai/clip-vit-base-patch32, -large-patch14); the text tower is kept small, as
# image embeddings never touch it.
VISION = {
    "b32": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, patch_size=32),
    "l14": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, patch_size=14),
}
PROJECTION = {"b32": 512, "l14": 768}


def _write(folder, name: str):
    import torch
    from transformers import CLIPConfig, CLIPModel

    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
    from sd_ref import write_tokenizer as tokenizer  # the tokenizer files CLIP folders carry

    vocab = tokenizer(folder)
    text = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                projection_dim=PROJECTION[name])  # fmt: skip
    vision = dict(VISION[name], image_size=224, projection_dim=PROJECTION[name])
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=PROJECTION[name])).save_pretrained(str(folder))
    return folder


def _rate(fn, pixels) -> float:
    fn(pixels)  # warm-up
    start = time.perf_counter()
    for _ in range(RUNS):
        fn(pixels)
    return RUNS * len(pixels) / (time.perf_counter() - start)


@pytest.mark.parametrize("name", os.environ.get("MIX_BENCH_CLIP", "b32,l14").split(","))
def test_image_embeddings_per_second(tmp_path, name, benchmark):
    import torch
    from transformers import CLIPModel

    from mixcli.models import load_model

    folder = _write(tmp_path / name, name)
    pixels = np.random.default_rng(0).standard_normal((BATCH, 3, 224, 224)).astype(np.float32)
    ours = load_model(folder)
    ref = CLIPModel.from_pretrained(str(folder)).eval()

    def reference(x):
        with torch.no_grad():
            return ref.get_image_features(pixel_values=torch.from_numpy(x))

    mix_rate = benchmark.pedantic(lambda: _rate(ours.embed_pixels, pixels), rounds=1, iterations=1)
    ref_rate = _rate(reference, pixels)
    benchmark.extra_info.update(mix_images_per_s=round(mix_rate, 2), transformers_images_per_s=round(ref_rate, 2),
                                ratio=round(mix_rate / ref_rate, 3), batch=BATCH, threads=torch.get_num_threads())  # fmt: skip
    print(f"\nCLIP {name} batch {BATCH}: mix {mix_rate:.2f} img/s, transformers {ref_rate:.2f} img/s, "
          f"ratio {mix_rate / ref_rate:.2f}")


@pytest.mark.parametrize("rows", [int(n) for n in os.environ.get("MIX_BENCH_EMBEDS", "100000").split(",")])
def test_semantic_search(rows, benchmark):
    from mixcli.datacopilot.semantic import similar_pairs

    rng = np.random.default_rng(0)
    embeds = rng.standard_normal((rows, 512)).astype(np.float32)
    embeds[1::1000] = embeds[::1000][: len(embeds[1::1000])]  # one planted duplicate per thousand rows
    embeds /= np.linalg.norm(embeds, axis=1, keepdims=True)
    start = time.perf_counter()
    found = benchmark.pedantic(lambda: similar_pairs(embeds, 0.95), rounds=1, iterations=1)
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert len(found) >= len(embeds[1::1000])
    benchmark.extra_info.update(rows=rows, seconds=round(seconds, 2), peak_rss_mb=round(peak_mb))
    print(f"\nsemantic search over {rows} embeddings: {seconds:.1f} s, peak RSS {peak_mb:.0f} MB, {len(found)} pairs")
