"""`mix infer --adapter`: LoRA adapters saved by peft on the transformers models, merged at load, give
peft's logits and greedy tokens (Qwen2-VL, InternVL2 with Qwen2 and InternLM2); bad adapters fail in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import internvl_ref
import qwen2_vl_ref
from helpers import assert_clear_margins, error_line, json_of, picture
from peft_adapters import LANGUAGE_LINEAR, edit_adapter, peft_adapter, transposed_pairs
from mixcli.adapters import read_adapter
from mixcli.models import load_model
from vlm_checks import write_paddle_copy

QUESTION = "What is in the picture?"


def assert_logits_close(ours: np.ndarray, ref: np.ndarray) -> None:
    scale = max(1.0, float(np.abs(ref).max()))
    assert np.abs(ours - ref).max() <= 1e-4 * scale


def assert_visible(tuned: np.ndarray, base: np.ndarray) -> None:
    """The adapter moves the logits far past the parity tolerance, so merging it (or not) shows."""
    assert np.abs(tuned - base).max() > 0.05 * max(1.0, float(np.abs(base).max()))


def all_logits(model, prompt) -> np.ndarray:
    """(T, vocab) logits of a prompt; Qwen2-VL's embedding carries its M-RoPE positions."""
    cache = model.make_cache(len(prompt.ids) + 1)
    embedded, lm = model.embed_prompt(prompt), model.net.language_model
    if hasattr(embedded, "positions"):
        return lm(embedded.embeds, cache, True, positions=embedded.positions).numpy()[0]
    return lm(embedded, cache, all_logits=True).numpy()[0]


def infer(cli, path, image, adapter=None, *extra):
    args = ["infer", str(path), str(image), "-q", QUESTION, "--max-new-tokens", "8", "--json", *extra]
    return cli(*args, *(["--adapter", str(adapter)] if adapter else []))


# ---- Qwen2-VL ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    """A tiny Qwen2-VL, a peft adapter on every linear layer of its language model plus a trained
    lm_head (modules_to_save), the peft model and a picture."""
    root = tmp_path_factory.mktemp("qwen-lora")
    path = qwen2_vl_ref.write_checkpoint(root / "ckpt", qwen2_vl_ref.TinyQwen2VL(), seed=1)
    adapter = root / "adapter"
    tuned = peft_adapter(qwen2_vl_ref.reference_model(path), adapter, seed=2, r=4, lora_alpha=8,
                         target_modules=LANGUAGE_LINEAR, modules_to_save=["lm_head"])
    picture(100, 60, 3).save(root / "photo.png")
    return path, adapter, tuned, root / "photo.png"


def qwen_inputs(path, image) -> dict:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    return qwen2_vl_ref.reference_inputs(qwen2_vl_ref.reference_processor(path), messages, [Image.open(image)])


def test_qwen2_vl_adapter_gives_peft_logits(qwen):
    path, adapter, tuned, image = qwen
    inputs = qwen_inputs(path, image)
    theirs = qwen2_vl_ref.reference_logits(tuned, inputs)
    with tuned.disable_adapter():
        assert_visible(theirs, qwen2_vl_ref.reference_logits(tuned, inputs))
    model = load_model(path, adapter=read_adapter(adapter))
    prompt = model.prepare([(QUESTION, None)], [Image.open(image).convert("RGB")])
    assert prompt.ids == inputs["input_ids"][0].tolist()
    assert_logits_close(all_logits(model, prompt), theirs)


def test_qwen2_vl_infer_adapter_gives_peft_greedy_tokens(cli, qwen):
    path, adapter, tuned, image = qwen
    eos = json.loads((path / "config.json").read_text())["eos_token_id"]
    theirs, steps = qwen2_vl_ref.reference_greedy(tuned, qwen_inputs(path, image), 8, eos, with_logits=True)
    assert_clear_margins(steps)
    record = json_of(infer(cli, path, image, adapter))
    assert record["adapter"] == str(adapter)
    assert record["token_ids"] == [t for t in theirs if t != eos]
    assert "adapter" not in json_of(infer(cli, path, image))


def test_fan_in_fan_out_is_honoured(qwen, tmp_path):
    path, adapter, tuned, image = qwen
    flipped = edit_adapter(adapter, tmp_path / "flipped", {"fan_in_fan_out": True}, transposed_pairs)
    prompt_model = load_model(path, adapter=read_adapter(flipped))
    prompt = prompt_model.prepare([(QUESTION, None)], [Image.open(image).convert("RGB")])
    assert_logits_close(all_logits(prompt_model, prompt), qwen2_vl_ref.reference_logits(tuned, qwen_inputs(path, image)))


def test_embedding_lora_gives_peft_logits_and_chat_answers_as_infer(cli, qwen, tmp_path):
    path, _, _, image = qwen
    adapter = tmp_path / "embedding"
    tuned = peft_adapter(qwen2_vl_ref.reference_model(path), adapter, seed=3, r=4, lora_alpha=8,
                         target_modules=["embed_tokens", "q_proj"])
    assert any(name.endswith("embed_tokens.lora_embedding_A") for name in read_adapter(adapter).tensors)
    model = load_model(path, adapter=read_adapter(adapter))
    prompt = model.prepare([(QUESTION, None)], [Image.open(image).convert("RGB")])
    assert_logits_close(all_logits(model, prompt), qwen2_vl_ref.reference_logits(tuned, qwen_inputs(path, image)))
    answer = json_of(infer(cli, path, image, adapter))["text"]
    chat = cli("chat", str(path), str(image), "--adapter", str(adapter), "--max-new-tokens", "8", input=QUESTION + "\n")
    assert chat.exit_code == 0 and chat.stdout == answer + "\n", chat.stderr


def test_adapter_on_a_paddle_copy_gives_the_same_logits(qwen, tmp_path):
    path, adapter, _, image = qwen
    copy = write_paddle_copy(path, tmp_path / "paddle-copy")
    lora = read_adapter(adapter)
    ours, theirs = load_model(copy, allow_pickle=True, adapter=lora), load_model(path, adapter=lora)
    prompt = ours.prepare([(QUESTION, None)], [Image.open(image).convert("RGB")])
    np.testing.assert_allclose(all_logits(ours, prompt), all_logits(theirs, prompt), atol=1e-5)


# ---- InternVL2 ----------------------------------------------------------------------------------------

# (checkpoint, peft's LoraConfig on transformers' port, the same adapter's config under the checkpoint's
# own module names, where a fused q/k/v LoRA has rank 3r and the alpha that keeps the parts' scale).
INTERNVL = {
    # peft's all-linear: the vision tower's q/k/v (rows of InternViT's fused qkv), the projector and the
    # language model; rsLoRA scaling (alpha / sqrt(r)).
    "qwen2-all-linear-rslora": (
        internvl_ref.TinyInternVL(template="internvl2_5"),
        dict(r=4, lora_alpha=8, target_modules="all-linear", use_rslora=True),
        dict(target_modules="all-linear", rank_pattern={"qkv": 12}, alpha_pattern={"qkv": 8 / 2 * 12**0.5}),
    ),
    # InternLM2 run as a Llama: its q/k/v_proj are rows of the checkpoint's fused wqkv; ranks and alphas per module.
    "internlm2-patterns": (
        internvl_ref.TinyInternVL(llm="internlm2", template="internlm2-chat", num_key_value_heads=2),
        dict(r=4, lora_alpha=8, target_modules=LANGUAGE_LINEAR, rank_pattern={"down_proj": 2},
             alpha_pattern={r"layers\.1\.self_attn\.o_proj": 3}),
        dict(target_modules="all-linear", rank_pattern={"w2": 2, "wqkv": 12},
             alpha_pattern={r"layers\.1\.attention\.wo": 3, "wqkv": 24}),
    ),
}


@pytest.fixture(scope="module", params=list(INTERNVL))
def internvl(request, tmp_path_factory):
    knobs, config, own_config = INTERNVL[request.param]
    root = tmp_path_factory.mktemp(request.param)
    path = internvl_ref.write_checkpoint(root / "ckpt", knobs, seed=1)
    adapter = root / "adapter"
    tuned = peft_adapter(internvl_ref.reference_model(path), adapter, seed=4, **config)
    picture(100, 60, 3).save(root / "photo.png")
    return knobs, path, adapter, tuned, root / "photo.png", own_config


def test_internvl_adapter_gives_peft_logits_and_greedy_tokens(cli, internvl):
    knobs, path, adapter, tuned, image, _ = internvl
    model = load_model(path, adapter=read_adapter(adapter))
    prompt = model.prepare([(QUESTION, None)], [Image.open(image).convert("RGB")])
    theirs = internvl_ref.reference_logits(tuned, prompt.ids, prompt.pixel_values, True)
    with tuned.disable_adapter():
        assert_visible(theirs, internvl_ref.reference_logits(tuned, prompt.ids, prompt.pixel_values, True))
    assert_logits_close(all_logits(model, prompt), theirs)
    eos = model.tokenizer.token_id(internvl_ref.upstream_eos_token(knobs.template))
    tokens, steps = internvl_ref.reference_greedy(tuned, prompt.ids, prompt.pixel_values, 8, eos, with_logits=True)
    assert_clear_margins(steps)
    assert json_of(infer(cli, path, image, adapter))["token_ids"] == [t for t in tokens if t != eos]


def test_internvl_adapter_in_the_checkpoints_own_names(internvl, tmp_path):
    """An adapter trained on OpenGVLab's InternVLChatModel names its modules as the checkpoint does
    (vision_model.*, mlp1.N, language_model.model.*, InternLM2's attention.wqkv): the same merge."""
    knobs, path, adapter, tuned, image, own_config = internvl
    own_config = {"auto_mapping": {"base_model_class": "InternVLChatModel"}, **own_config}
    own = edit_adapter(adapter, tmp_path / "own", own_config, lambda w: own_names(w, path))
    model = load_model(path, adapter=read_adapter(own))
    prompt = model.prepare([(QUESTION, None)], [Image.open(image).convert("RGB")])
    assert_logits_close(all_logits(model, prompt), internvl_ref.reference_logits(tuned, prompt.ids, prompt.pixel_values, True))


def test_internvl_modules_to_save_of_the_vision_tower_and_projector(tmp_path):
    """Whole modules trained beside the LoRA: the port's separate q/k/v replace rows of the fused qkv."""
    path = internvl_ref.write_checkpoint(tmp_path / "ckpt", internvl_ref.TinyInternVL(), seed=1)
    adapter = tmp_path / "adapter"
    tuned = peft_adapter(internvl_ref.reference_model(path), adapter, seed=2, std=0.05, r=4, lora_alpha=8,
                         target_modules=LANGUAGE_LINEAR, modules_to_save=["vision_tower", "multi_modal_projector"])
    saved = read_adapter(adapter).tensors
    assert "model.vision_tower.encoder.layer.0.attention.k_proj.weight" in saved
    assert "model.multi_modal_projector.linear_1.weight" in saved
    model = load_model(path, adapter=read_adapter(adapter))
    prompt = model.prepare([(QUESTION, None)], [picture(100, 60, 3)])
    theirs = internvl_ref.reference_logits(tuned, prompt.ids, prompt.pixel_values, True)
    assert_logits_close(all_logits(model, prompt), theirs)
    without_vision = load_model(path, adapter=read_adapter(edit_adapter(adapter, tmp_path / "lora-only", tensors=_lora_only)))
    assert_visible(theirs, all_logits(without_vision, prompt))


def _lora_only(weights: dict) -> dict:
    return {name: value for name, value in weights.items() if ".lora_" in name}


def test_internvl_adapter_on_a_paddle_copy_gives_the_same_logits(internvl, tmp_path):
    """PaddleMIX's .pdparams keep Linear weights (in, out), fused qkv / wqkv too: the deltas follow."""
    _, path, adapter, _, image, _ = internvl
    copy = write_paddle_copy(path, tmp_path / "paddle-copy")
    lora = read_adapter(adapter)
    ours, theirs = load_model(copy, allow_pickle=True, adapter=lora), load_model(path, adapter=lora)
    prompt = ours.prepare([(QUESTION, None)], [Image.open(image).convert("RGB")])
    np.testing.assert_allclose(all_logits(ours, prompt), all_logits(theirs, prompt), atol=1e-5)


def own_names(weights: dict, path) -> dict:
    """peft's tensors for the port, renamed to the checkpoint's modules; fused q/k/v LoRAs become one
    LoRA of the fused projection (A stacked, B block-diagonal, rows in the fused order)."""
    config = json.loads((path / "config.json").read_text())
    llm = config["llm_config"]
    prefix = "base_model.model."
    out, fused = {}, {}
    for name, value in weights.items():
        module, part = name[len(prefix):].rsplit(".lora_", 1)
        own = _own_module(module, llm["architectures"][0] == "InternLM2ForCausalLM")
        if isinstance(own, tuple):
            fused.setdefault(own[0], {})[(own[1], part)] = value
        else:
            out[f"{prefix}{own}.lora_{part}"] = value
    for module, parts in fused.items():
        out.update(_fused_lora(prefix + module, parts, config))
    return out


def _own_module(module: str, internlm2: bool):
    import re

    rules = [(r"^model\.vision_tower\.encoder\.layer\.(\d+)\.attention\.projection_layer$", r"vision_model.encoder.layers.\1.attn.proj"),
             (r"^model\.vision_tower\.encoder\.layer\.(\d+)\.mlp\.", r"vision_model.encoder.layers.\1.mlp."),
             (r"^model\.multi_modal_projector\.linear_1$", "mlp1.1"), (r"^model\.multi_modal_projector\.linear_2$", "mlp1.3"),
             (r"^model\.language_model\.", "language_model.model.")]
    if m := re.match(r"^model\.vision_tower\.encoder\.layer\.(\d+)\.attention\.([qkv])_proj$", module):
        return f"vision_model.encoder.layers.{m[1]}.attn.qkv", m[2]
    if internlm2 and (m := re.match(r"^model\.language_model\.layers\.(\d+)\.self_attn\.([qkv])_proj$", module)):
        return f"language_model.model.layers.{m[1]}.attention.wqkv", m[2]
    if internlm2:
        rules = [(r"\.self_attn\.o_proj$", ".attention.wo"), (r"\.mlp\.gate_proj$", ".feed_forward.w1"),
                 (r"\.mlp\.up_proj$", ".feed_forward.w3"), (r"\.mlp\.down_proj$", ".feed_forward.w2")] + rules
    for pattern, repl in rules:
        module = re.sub(pattern, repl, module)
    return module


def _fused_lora(module: str, parts: dict, config: dict) -> dict:
    """One LoRA whose B @ A is the q, k and v deltas in the fused layout (InternViT: q|k|v blocks;
    InternLM2: per kv head, its queries then k then v, upstream's rearrange)."""
    a = np.concatenate([parts[(p, "A.weight")] for p in "qkv"])  # (3r, in)
    r = parts[("q", "A.weight")].shape[0]
    blocks = [parts[(p, "B.weight")] for p in "qkv"]
    b = np.zeros((sum(x.shape[0] for x in blocks), 3 * r), np.float32)
    row = 0
    for i, block in enumerate(blocks):
        b[row : row + len(block), i * r : (i + 1) * r] = block
        row += len(block)
    if "wqkv" in module:
        b = b[_wqkv_order(config["llm_config"])]
    return {f"{module}.lora_A.weight": a, f"{module}.lora_B.weight": b}


def _wqkv_order(llm: dict) -> np.ndarray:
    """For each row of the fused wqkv, the row of [q; k; v] it holds."""
    h, kv = llm["num_attention_heads"], llm["num_key_value_heads"]
    d, g = llm["hidden_size"] // h, h // kv
    order = []
    for head in range(kv):
        order += [np.arange((head * g + j) * d, (head * g + j + 1) * d) for j in range(g)]
        order += [h * d + np.arange(head * d, (head + 1) * d), (h + kv) * d + np.arange(head * d, (head + 1) * d)]
    return np.concatenate(order)


# ---- adapters that do not fit --------------------------------------------------------------------------


def test_adapter_for_another_model_type_is_refused(cli, qwen, internvl):
    path, adapter = internvl[1], qwen[1]
    line = error_line(infer(cli, path, qwen[3], adapter))
    assert "Qwen2VLForConditionalGeneration" in line and "InternVL" in line


def test_adapter_whose_names_fit_nothing_is_refused(cli, qwen, tmp_path):
    def elsewhere(weights):
        return {k.replace(".language_model.", ".text_model.").replace("lm_head", "head"): v for k, v in weights.items()}

    line = error_line(infer(cli, qwen[0], qwen[3], edit_adapter(qwen[1], tmp_path / "anon", tensors=elsewhere)))
    assert "none of the 29 tensors" in line and "another model" in line


def test_adapter_of_another_family_without_its_class_is_refused(cli, qwen, internvl, tmp_path):
    """Without auto_mapping the Qwen2-VL adapter's names fit InternVL's port, its shapes do not."""
    anonymous = edit_adapter(qwen[1], tmp_path / "anon", {"auto_mapping": None})
    assert "does not fit this model" in error_line(infer(cli, internvl[1], qwen[3], anonymous))


def test_adapter_with_other_shapes_is_refused(cli, qwen, tmp_path):
    path = qwen2_vl_ref.write_checkpoint(tmp_path / "wider", qwen2_vl_ref.TinyQwen2VL(intermediate_size=128), seed=1)
    line = error_line(infer(cli, path, qwen[3], qwen[1]))
    assert "does not fit this model" in line and "mlp.down_proj" in line and "128" in line


def test_every_adapter_tensor_must_be_applied(cli, qwen, tmp_path):
    def extra(weights):
        lora = "base_model.model.model.language_model.layers.7.self_attn.q_proj.lora_"
        return {**weights, lora + "A.weight": np.zeros((4, 64), np.float32), lora + "B.weight": np.zeros((64, 4), np.float32)}

    line = error_line(infer(cli, qwen[0], qwen[3], edit_adapter(qwen[1], tmp_path / "extra", tensors=extra)))
    assert "2 of the" in line and "layers.7.self_attn.q_proj" in line and "match no layer" in line


def test_lora_outside_target_modules_is_refused(cli, qwen, tmp_path):
    narrowed = edit_adapter(qwen[1], tmp_path / "narrow", {"target_modules": ["q_proj", "k_proj", "v_proj"]})
    line = error_line(infer(cli, qwen[0], qwen[3], narrowed))
    assert "not among target_modules" in line and "mlp.down_proj" in line


@pytest.mark.parametrize(
    "config, named",
    [({"use_dora": True}, "DoRA"), ({"peft_type": "IA3"}, "IA3"), ({"layer_replication": [[0, 2]]}, "layer replication")],
)
def test_unsupported_adapter_kinds_are_named(cli, qwen, tmp_path, config, named):
    line = error_line(infer(cli, qwen[0], qwen[3], edit_adapter(qwen[1], tmp_path / "kind", config)))
    assert named in line


def test_folder_without_an_adapter(cli, qwen, tmp_path):
    line = error_line(infer(cli, qwen[0], qwen[3], tmp_path))
    assert "adapter_config.json" in line
