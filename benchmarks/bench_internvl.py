"""InternVL2-1B-sized model, fp32 on CPU, one 448x448 image: mix (Paddle) against transformers on the same
random checkpoint (see vlm_sides: each side in its own process, one at a time).

    python -m pytest benchmarks/bench_internvl.py --benchmark-only -s
"""

from __future__ import annotations

from internvl_ref import TinyInternVL, reference_model, write_checkpoint
from vlm_sides import QUESTION, decode_report, first_token_report, image, mix_commands, transformers_commands

# OpenGVLab/InternVL2-1B: InternViT-300M-448px + Qwen2-0.5B-Instruct.
INTERNVL2_1B = TinyInternVL(
    template="Hermes-2", image_size=448, vision_hidden_size=1024, vision_heads=16, vision_layers=24,
    vision_intermediate_size=4096, hidden_size=896, num_attention_heads=14, num_key_value_heads=2,
    num_hidden_layers=24, intermediate_size=4864, vocab_size=151655, max_position_embeddings=32768,
    max_dynamic_patch=12,
)  # fmt: skip


def write(folder: str) -> None:
    write_checkpoint(folder, INTERNVL2_1B, seed=0)


def commands(side: str, folder: str) -> dict:
    if side == "mix":
        return mix_commands(folder)
    import torch

    from mixcli.vlm import load_vlm

    # The remote-code model takes the prompt's ids and pixels: mix's, which the parity tests hold to its processor.
    prompt = load_vlm(folder).model.prepare([(QUESTION, None)], [image()])
    ref = reference_model(folder)
    ids, pixels = torch.tensor([prompt.ids]), torch.from_numpy(prompt.pixel_values)

    def generate(new_tokens: int) -> None:
        with torch.no_grad():
            ref.generate(input_ids=ids, pixel_values=pixels, attention_mask=torch.ones_like(ids), do_sample=False,
                         max_new_tokens=new_tokens, min_new_tokens=new_tokens, eos_token_id=None, pad_token_id=0)

    return transformers_commands(generate)


def test_time_to_first_token(benchmark, vlm_checkpoint):
    first_token_report(benchmark, __name__, vlm_checkpoint)


def test_decode_tokens_per_second(benchmark, vlm_checkpoint, bandwidth):
    decode_report(benchmark, __name__, vlm_checkpoint, bandwidth)
