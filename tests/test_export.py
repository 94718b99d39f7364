"""`mix export MODEL -o OUT [--adapter DIR]`: the merged checkpoint in its authors' layout (names, shards,
dtypes, side files), loaded by transformers with nothing missing or unexpected, answering as peft's merged
model and as `mix infer --adapter`; refusals leave nothing half-written."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import internvl_ref
import qwen2_vl_ref
from helpers import assert_clear_margins, error_line, json_of, picture
from mixcli.weights import open_checkpoint, read_safetensors
from peft_adapters import LANGUAGE_LINEAR, edit_adapter, peft_adapter, peft_merged
from vlm_checks import write_paddle_copy

QUESTION = "What is in the picture?"
SIDE_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json")


def infer_tokens(cli, path, image, *extra) -> list[int]:
    args = ["infer", str(path), str(image), "-q", QUESTION, "--max-new-tokens", "8", "--json", *extra]
    return json_of(cli(*args))["token_ids"]


def header(path) -> dict:
    return {name: (ref.dtype, ref.shape) for name, ref in read_safetensors(path).items()}


# ---- Qwen2-VL ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    """A tiny Qwen2-VL and a peft adapter on its language model's linear layers plus a trained lm_head."""
    root = tmp_path_factory.mktemp("qwen-export")
    path = qwen2_vl_ref.write_checkpoint(root / "ckpt", qwen2_vl_ref.TinyQwen2VL(), seed=1)
    adapter = root / "adapter"
    peft_adapter(qwen2_vl_ref.reference_model(path), adapter, seed=6, r=4, lora_alpha=8, target_modules=LANGUAGE_LINEAR,
                 modules_to_save=["lm_head"])
    picture(100, 60, 3).save(root / "photo.png")
    return path, adapter, root / "photo.png"


@pytest.fixture(scope="module")
def qwen_export(qwen, tmp_path_factory):
    from typer.testing import CliRunner

    from mixcli.cli.app import app

    path, adapter, _ = qwen
    out = tmp_path_factory.mktemp("qwen-out") / "merged"
    result = CliRunner().invoke(app, ["export", str(path), "-o", str(out), "--adapter", str(adapter), "--json"])
    return out, json_of(result)


def test_export_record_and_files(qwen, qwen_export):
    path, adapter, _ = qwen
    out, record = qwen_export
    assert record["output"] == str(out) and record["adapter"] == str(adapter) and record["format"] == "safetensors"
    assert record["files"] == ["model.safetensors"] and record["merged_tensors"] == 2 * 7 + 1  # and lm_head
    for name in (*SIDE_FILES, "chat_template.json", "preprocessor_config.json"):
        assert (out / name).read_bytes() == (path / name).read_bytes(), name
    assert header(out / "model.safetensors") == header(path / "model.safetensors")


def test_tied_export_has_no_lm_head(cli, tmp_path):
    from transformers import Qwen2VLForConditionalGeneration

    knobs = qwen2_vl_ref.TinyQwen2VL(tie_word_embeddings=True, num_key_value_heads=4, mrope_section=(4, 2, 2))
    path = qwen2_vl_ref.write_checkpoint(tmp_path / "ckpt", knobs, seed=1)
    peft_adapter(qwen2_vl_ref.reference_model(path), tmp_path / "adapter", r=4, target_modules=LANGUAGE_LINEAR)
    json_of(cli("export", str(path), "-o", str(tmp_path / "out"), "--adapter", str(tmp_path / "adapter"), "--json"))
    assert "lm_head.weight" not in header(tmp_path / "out" / "model.safetensors")
    _, info = Qwen2VLForConditionalGeneration.from_pretrained(str(tmp_path / "out"), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info


def test_transformers_loads_the_export_and_answers_as_peft_merged(cli, qwen, qwen_export):
    from transformers import Qwen2VLForConditionalGeneration

    path, adapter, image = qwen
    out, _ = qwen_export
    loaded, info = Qwen2VLForConditionalGeneration.from_pretrained(str(out), dtype="float32", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    inputs = qwen2_vl_ref.reference_inputs(qwen2_vl_ref.reference_processor(path), messages, [Image.open(image)])
    eos = json.loads((path / "config.json").read_text())["eos_token_id"]
    merged = peft_merged(qwen2_vl_ref.reference_model(path), adapter)
    expected, steps = qwen2_vl_ref.reference_greedy(merged, inputs, 8, eos, with_logits=True)
    assert_clear_margins(steps)
    assert qwen2_vl_ref.reference_greedy(loaded.eval(), inputs, 8, eos) == expected
    expected = [t for t in expected if t != eos]
    assert infer_tokens(cli, out, image) == expected == infer_tokens(cli, path, image, "--adapter", str(adapter))
    assert infer_tokens(cli, path, image) != expected  # the adapter shows


def test_export_without_adapter_of_a_paddle_copy_restores_the_original(cli, qwen, tmp_path):
    path, _, _ = qwen
    copy = write_paddle_copy(path, tmp_path / "paddle-copy")
    record = json_of(cli("export", str(copy), "-o", str(tmp_path / "out"), "--allow-pickle", "--json"))
    assert record["files"] == ["model.safetensors"] and record["merged_tensors"] == 0
    ours, original = open_checkpoint(tmp_path / "out"), open_checkpoint(path)
    assert sorted(ours) == sorted(original)
    for name in original:
        np.testing.assert_array_equal(ours[name].numpy(), original[name].numpy(), err_msg=name)


# ---- InternVL2 (InternLM2), sharded ------------------------------------------------------------------


@pytest.fixture(scope="module")
def internlm2(tmp_path_factory):
    """A two-shard InternLM2 InternVL2 and an adapter whose q/k/v LoRAs land in the fused wqkv rows."""
    root = tmp_path_factory.mktemp("internlm2-export")
    knobs = internvl_ref.TinyInternVL(llm="internlm2", template="internlm2-chat", num_key_value_heads=2)
    path = internvl_ref.write_checkpoint(root / "ckpt", knobs, seed=1, shards=2)
    adapter = root / "adapter"
    tuned = peft_adapter(internvl_ref.reference_model(path), adapter, seed=5, r=4, lora_alpha=8,
                         target_modules=LANGUAGE_LINEAR)
    picture(100, 60, 3).save(root / "photo.png")
    return knobs, path, adapter, tuned, root / "photo.png"


def test_sharded_export_keeps_the_split_and_answers_as_peft(cli, internlm2, tmp_path):
    from mixcli.models import load_model

    knobs, path, adapter, tuned, image = internlm2
    out = tmp_path / "merged"
    record = json_of(cli("export", str(path), "-o", str(out), "--adapter", str(adapter), "--json"))
    index = json.loads((path / "model.safetensors.index.json").read_text())["weight_map"]
    assert json.loads((out / "model.safetensors.index.json").read_text())["weight_map"] == index
    assert record["files"] == sorted(set(index.values())) + ["model.safetensors.index.json"]
    for shard in set(index.values()):
        assert header(out / shard) == header(path / shard)
    reference = internvl_ref.reference_model(out)  # strict: no missing or unexpected tensors
    prompt = load_model(path).prepare([(QUESTION, None)], [Image.open(image).convert("RGB")])
    eos = load_model(out).tokenizer.token_id(internvl_ref.upstream_eos_token(knobs.template))
    expected, steps = internvl_ref.reference_greedy(tuned, prompt.ids, prompt.pixel_values, 8, eos, with_logits=True)
    assert_clear_margins(steps)
    assert internvl_ref.reference_greedy(reference, prompt.ids, prompt.pixel_values, 8, eos) == expected
    assert infer_tokens(cli, out, image) == [t for t in expected if t != eos]


def test_bfloat16_export_stays_bfloat16_rounded_as_torch(cli, tmp_path):
    import torch
    from safetensors.torch import load_file

    knobs = internvl_ref.TinyInternVL(dtype="bfloat16")
    path = internvl_ref.write_checkpoint(tmp_path / "ckpt", knobs, seed=1)
    adapter = tmp_path / "adapter"
    peft_adapter(internvl_ref.reference_model(path), adapter, seed=4, r=4, lora_alpha=8, target_modules=LANGUAGE_LINEAR)
    json_of(cli("export", str(path), "-o", str(tmp_path / "out"), "--adapter", str(adapter), "--json"))
    ours, base = load_file(str(tmp_path / "out" / "model.safetensors")), load_file(str(path / "model.safetensors"))
    lora = load_file(str(adapter / "adapter_model.safetensors"))
    assert {t.dtype for t in ours.values()} == {torch.bfloat16}
    name = "language_model.model.layers.1.mlp.down_proj.weight"
    prefix = "base_model.model.model.language_model.layers.1.mlp.down_proj.lora_"
    delta = lora[prefix + "B.weight"] @ lora[prefix + "A.weight"] * 2.0
    assert torch.equal(ours[name], (base[name].float() + delta).to(torch.bfloat16))
    untouched = "vision_model.encoder.layers.0.attn.qkv.weight"
    assert torch.equal(ours[untouched], base[untouched])


# ---- refusals ----------------------------------------------------------------------------------------


def test_output_that_holds_files_needs_force(cli, qwen, tmp_path):
    path, adapter, _ = qwen
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    line = error_line(cli("export", str(path), "-o", str(out)))
    assert "already holds files" in line and "--force" in line
    assert (out / "notes.txt").exists()
    json_of(cli("export", str(path), "-o", str(out), "--force", "--json"))
    assert not (out / "notes.txt").exists() and (out / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_failed_export_leaves_nothing(cli, qwen, tmp_path):
    path, adapter, _ = qwen
    narrowed = edit_adapter(adapter, tmp_path / "narrow", {"target_modules": ["q_proj"]})
    out = tmp_path / "exports" / "out"
    assert "target_modules" in error_line(cli("export", str(path), "-o", str(out), "--adapter", str(narrowed)))
    assert not out.exists() and not any(out.parent.iterdir() if out.parent.exists() else [])


def test_output_over_the_model_is_refused(cli, qwen):
    path, _, _ = qwen
    assert "holds the model" in error_line(cli("export", str(path), "-o", str(path), "--force"))
    assert "holds the model" in error_line(cli("export", str(path), "-o", str(path.parent), "--force"))


def test_an_unknown_format_is_a_usage_error(cli, qwen, tmp_path):
    result = cli("export", str(qwen[0]), "-o", str(tmp_path / "out"), "--format", "gguf")
    assert result.exit_code == 2 and "safetensors" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("fmt", ["onnx", "paddle"])
def test_graph_formats_of_a_vision_language_model_are_refused(cli, qwen, tmp_path, fmt):
    line = error_line(cli("export", str(qwen[0]), "-o", str(tmp_path / "out"), "--format", fmt))
    assert "not a diffusion pipeline" in line
    assert not (tmp_path / "out").exists()
