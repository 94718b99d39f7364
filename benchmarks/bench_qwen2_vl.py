"""Qwen2-VL-2B-sized model, fp32 on CPU, one 448x448 image: mix (Paddle) against transformers on the same
random checkpoint (see vlm_sides: each side in its own process, one at a time). Needs about 12 GB of RAM.

    python -m pytest benchmarks/bench_qwen2_vl.py --benchmark-only -s
"""

from __future__ import annotations

from qwen2_vl_ref import TinyQwen2VL, reference_inputs, reference_processor, write_checkpoint
from vlm_sides import QUESTION, decode_report, first_token_report, image, mix_commands, transformers_commands

# Qwen/Qwen2-VL-2B-Instruct: a 675M-parameter vision tower + Qwen2-1.5B (tied embeddings).
QWEN2_VL_2B = TinyQwen2VL(
    hidden_size=1536, num_attention_heads=12, num_key_value_heads=2, num_hidden_layers=28, intermediate_size=8960,
    mrope_section=(16, 24, 24), tie_word_embeddings=True, max_position_embeddings=32768, depth=32, embed_dim=1280,
    num_heads=16, mlp_ratio=4, min_pixels=3136, max_pixels=12845056, vocab_size=151936,
)  # fmt: skip


def write(folder: str) -> None:
    write_checkpoint(folder, QWEN2_VL_2B, seed=0)


def commands(side: str, folder: str) -> dict:
    if side == "mix":
        return mix_commands(folder)
    import torch
    from transformers import Qwen2VLForConditionalGeneration

    ref = Qwen2VLForConditionalGeneration.from_pretrained(folder, dtype="float32").eval()
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    inputs = reference_inputs(reference_processor(folder), messages, [image()])
    tensors = {k: torch.from_numpy(v) for k, v in inputs.items() if k != "text"}

    def generate(new_tokens: int) -> None:
        with torch.no_grad():
            ref.generate(**tensors, do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                         eos_token_id=None, pad_token_id=0)  # fmt: skip

    return transformers_commands(generate)


def test_time_to_first_token(benchmark, vlm_checkpoint):
    first_token_report(benchmark, __name__, vlm_checkpoint)


def test_decode_tokens_per_second(benchmark, vlm_checkpoint, bandwidth):
    decode_report(benchmark, __name__, vlm_checkpoint, bandwidth)
