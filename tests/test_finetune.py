"""`mix finetune` against transformers + peft on tiny checkpoints: labels, first-batch loss, LoRA
gradients, AdamW steps, the PEFT adapter's names; learning, resume, several processes, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from finetune_ref import ROWS, cross_entropy, peft_model, write_pictures, write_rows
from helpers import error_line, json_of
from internvl_ref import TinyInternVL
from internvl_ref import reference_model as internvl_reference
from internvl_ref import upstream_pixel_values
from internvl_ref import write_checkpoint as write_internvl
from qwen2_vl_ref import CHAT_TEMPLATE, TinyQwen2VL, _expand, reference_processor
from qwen2_vl_ref import reference_model as qwen_reference
from qwen2_vl_ref import write_checkpoint as write_qwen

QWEN = TinyQwen2VL(hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2,
                   mrope_section=(2, 1, 1), depth=1, embed_dim=16, num_heads=2)  # fmt: skip
INTERNVL = TinyInternVL(vision_layers=1, num_hidden_layers=2)


@pytest.fixture(scope="module", autouse=True)
def shared_ext_build(tmp_path_factory):
    """One build of the compiled ops for this module's runs and their processes (each test has its own MIX_HOME)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MIX_EXT_DIR", str(tmp_path_factory.mktemp("ext")))
        yield


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    write_pictures(folder)
    for name, row in ROWS.items():
        write_rows(folder / f"{name}.jsonl", [row])
    write_rows(folder / "all.jsonl", list(ROWS.values()))
    return folder


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    return write_qwen(tmp_path_factory.mktemp("qwen"), QWEN, seed=3)


@pytest.fixture(scope="module")
def internvl(tmp_path_factory):
    return write_internvl(tmp_path_factory.mktemp("internvl"), INTERNVL, seed=3)


def trainable(path, **method):
    """A loaded model made trainable (LoRA on every linear of the language model by default)."""
    from mixcli.models import load_model
    from mixcli.train.model import Method, prepare

    model = load_model(path)
    names, lora = prepare(model, Method(**{"dropout": 0.0, **method}), seed=0)
    return model, names, lora


def samples(model, path):
    from mixcli.train.data import preflight

    return preflight(model, [path], max_length=4096).samples


# ---- Qwen2-VL: the reference's inputs --------------------------------------------------------------

HF_MESSAGES = {
    "single": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "\nWhat is in the picture?"}]},
               {"role": "assistant", "content": [{"type": "text", "text": "A cat is sitting on a red chair."}]}],
    "multi-turn-system": [
        {"role": "system", "content": [{"type": "text", "text": "You are a helpful assistant."}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "\nDescribe the image."}]},
        {"role": "assistant", "content": [{"type": "text", "text": "The sky is blue."}]},
        {"role": "user", "content": [{"type": "text", "text": "And the chart?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "The chart shows 1, 2, 3 and 10."}]}],
    "several-images": [
        {"role": "user", "content": [{"type": "text", "text": "Compare "}, {"type": "image"}, {"type": "text", "text": " and "},
                                     {"type": "image"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "The quick brown fox jumps over the lazy dog."}]}],
}  # fmt: skip
IMAGES = {"single": ["a.png"], "multi-turn-system": ["b.png"], "several-images": ["a.png", "c.png"]}
ANSWERS = {"single": ["A cat is sitting on a red chair."], "multi-turn-system": ["The sky is blue.", "The chart shows 1, 2, 3 and 10."],
           "several-images": ["The quick brown fox jumps over the lazy dog."]}  # fmt: skip


def qwen_inputs(path, name: str, folder) -> dict:
    """What transformers' tokenizer (apply_chat_template) and slow image processor make of the row."""
    import torch

    image_processor, tokenizer = reference_processor(path)
    text = tokenizer.apply_chat_template(HF_MESSAGES[name], add_generation_prompt=False, tokenize=False,
                                         chat_template=CHAT_TEMPLATE)  # fmt: skip
    images = [Image.open(folder / f).convert("RGB") for f in IMAGES[name]]
    pixels = image_processor(images=images, return_tensors="np")
    text = _expand(text, "<|image_pad|>", pixels["image_grid_thw"])
    ids = np.array(tokenizer(text)["input_ids"], dtype=np.int64)
    types = (ids == tokenizer.convert_tokens_to_ids("<|image_pad|>")).astype(np.int64)
    return {"ids": ids, "input_ids": torch.from_numpy(ids[None]), "mm_token_type_ids": torch.from_numpy(types[None]),
            "pixel_values": torch.from_numpy(np.asarray(pixels["pixel_values"])),
            "image_grid_thw": torch.from_numpy(np.asarray(pixels["image_grid_thw"]))}  # fmt: skip


def torch_logits(reference, inputs: dict):
    keys = ("input_ids", "mm_token_type_ids", "pixel_values", "image_grid_thw")
    return reference(**{k: inputs[k] for k in keys if k in inputs}).logits[0]


@pytest.mark.parametrize("name", list(ROWS))
def test_qwen2_vl_labels_and_first_loss_match_transformers(qwen, data, name):
    """Same ids as transformers' chat template; labels = each answer + <|im_end|>; loss within 1e-5."""
    import torch

    from mixcli.train.loop import sample_loss

    model, _, _ = trainable(qwen)
    (sample,) = samples(model, data / f"{name}.jsonl")
    inputs = qwen_inputs(qwen, name, data)
    assert sample.ids.tolist() == inputs["ids"].tolist()
    learned = model.tokenizer.decode(sample.ids[sample.labels != -100].tolist(), skip_special_tokens=False)
    assert learned == "".join(a + "<|im_end|>" for a in ANSWERS[name])
    ends = np.nonzero(sample.ids == model.tokenizer.token_id("<|im_end|>"))[0]
    assert all(sample.labels[e + 1] == -100 for e in ends if e + 1 < len(sample.ids))  # the newline after it
    ours = float(sample_loss(model, sample)) / sample.label_count
    with torch.no_grad():
        theirs = cross_entropy(torch_logits(qwen_reference(qwen), inputs), sample.ids, sample.labels)
    assert ours == pytest.approx(float(theirs) / sample.label_count, rel=1e-5)


@pytest.mark.parametrize("name", list(ROWS))
def test_internvl_first_loss_matches_transformers(internvl, data, name):
    """InternVL2 (Qwen2 backbone, Hermes-2 template): <image> replaced where it stands, the template's
    system prompt unless the row has one; loss within 1e-5 of transformers' InternVL on the same pixels."""
    import torch

    from mixcli.train.loop import sample_loss

    model, _, _ = trainable(internvl)
    (sample,) = samples(model, data / f"{name}.jsonl")
    text = model.tokenizer.decode(sample.ids.tolist(), skip_special_tokens=False)
    system = "You are a helpful assistant." if name == "multi-turn-system" else model.template.system_message
    assert text.startswith(f"<|im_start|>system\n{system}<|im_end|><|im_start|>user\n")
    learned = model.tokenizer.decode(sample.ids[sample.labels != -100].tolist(), skip_special_tokens=False)
    assert learned == "".join(a + "<|im_end|>" for a in ANSWERS[name])
    cfg = model.config
    pixels = np.concatenate([upstream_pixel_values(Image.open(data / f).convert("RGB"), cfg.image_size, cfg.min_dynamic_patch,
                                                   cfg.max_dynamic_patch, cfg.use_thumbnail) for f in IMAGES[name]])  # fmt: skip
    ours = float(sample_loss(model, sample)) / sample.label_count
    reference = internvl_reference(internvl)
    with torch.no_grad():
        logits = reference(input_ids=torch.from_numpy(sample.ids[None]), pixel_values=torch.from_numpy(pixels)).logits[0]
    assert ours == pytest.approx(float(cross_entropy(logits, sample.ids, sample.labels)) / sample.label_count, rel=1e-5)


def random_adapter(lora: dict, seed: int = 5) -> None:
    """Nonzero B (peft starts it at zero, which leaves A without a gradient)."""
    rng = np.random.default_rng(seed)
    for layer in lora.values():
        layer.lora_B.set_value(rng.normal(0, 0.2, layer.lora_B.shape).astype(np.float32))


def test_lora_gradients_match_peft(qwen, data, tmp_path):
    """The adapter's names put every tensor in place in peft; one backward gives the same gradients."""
    import torch

    from mixcli.train import adapter
    from mixcli.train.loop import sample_loss
    from mixcli.train.model import Method

    model, names, lora = trainable(qwen)
    random_adapter(lora)
    (sample,) = samples(model, data / "multi-turn-system.jsonl")
    (sample_loss(model, sample) / sample.label_count).backward()
    adapter.write_adapter(tmp_path, model, lora, names, Method(dropout=0.0), str(qwen))
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert "model.language_model.layers.0.self_attn.q_proj" in config["target_modules"]
    assert len(config["target_modules"]) == 7 * QWEN.num_hidden_layers
    peft = peft_model(qwen_reference(qwen), tmp_path)
    inputs = qwen_inputs(qwen, "multi-turn-system", data)
    (cross_entropy(torch_logits(peft, inputs), sample.ids, sample.labels) / sample.label_count).backward()
    params = dict(peft.named_parameters())
    for name, layer in lora.items():
        base = "base_model.model." + model.hf_name(name)
        for part in ("A", "B"):
            theirs = params[f"{base}.lora_{part}.default.weight"].grad.numpy()
            ours = getattr(layer, f"lora_{part}").grad.numpy().T
            np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max())


def finetune_cfg(model, data_file, out, **options):
    from mixcli.train.config import FinetuneConfig

    return FinetuneConfig(model=str(model), data=[str(data_file)], output=str(out), **options)


def adapter_tensors(folder) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def test_adamw_steps_match_torch_and_peft(qwen, data, tmp_path):
    """Three steps (global batch of 2 by accumulation, warm-up, cosine, clipping, weight decay) end
    with the adapter that torch's AdamW on peft's LoRA reaches."""
    import torch

    from mixcli.train import adapter
    from mixcli.train.launch import finetune
    from mixcli.train.loop import make_plan
    from mixcli.train.model import Method
    from mixcli.train.schedule import lr_factor

    options = dict(lora_dropout=0.0, max_steps=3, grad_accum=2, lr=5e-3, weight_decay=0.1, warmup_ratio=0.3,
                   max_grad_norm=0.05, seed=7)  # fmt: skip
    cfg = finetune_cfg(qwen, data / "all.jsonl", tmp_path / "out", **options)
    finetune(cfg)
    model, names, lora = _trainable_seeded(qwen, cfg.seed)  # the run's starting adapter
    adapter.write_adapter(tmp_path / "start", model, lora, names, Method(dropout=0.0), str(qwen))
    peft = peft_model(qwen_reference(qwen), tmp_path / "start")
    rows = samples(model, data / "all.jsonl")
    inputs = {i: qwen_inputs(qwen, name, data) for i, name in enumerate(ROWS)}
    params = [p for n, p in peft.named_parameters() if "lora_" in n]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=cfg.weight_decay)
    plan = make_plan(cfg, len(rows), 1)
    for step in range(cfg.max_steps):
        batch = plan.batch(step, cfg.seed)
        labels = sum(rows[i].label_count for i in batch)
        for i in batch:
            (cross_entropy(torch_logits(peft, inputs[i]), rows[i].ids, rows[i].labels) / labels).backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * lr_factor("cosine", step, cfg.max_steps, 1)
        optimizer.step()
        optimizer.zero_grad()
    ours, state = adapter_tensors(tmp_path / "out"), peft.state_dict()
    for key, value in ours.items():
        theirs = state[key.replace(".weight", ".default.weight")].detach().numpy()
        np.testing.assert_allclose(value, theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max())


def _trainable_seeded(path, seed: int):
    from mixcli.models import load_model
    from mixcli.train.model import Method, prepare

    model = load_model(path)
    names, lora = prepare(model, Method(dropout=0.0), seed=seed)
    return model, names, lora


# ---- through the command -----------------------------------------------------------------------


def test_learns_the_example_dataset(cli, qwen, tmp_path):
    """examples/train.jsonl (two bad rows, left out with --skip-bad): loss falls by more than half;
    OUT holds the contract's files, and peft loads the adapter."""
    from pathlib import Path

    example = Path(__file__).parents[1] / "examples" / "train.jsonl"
    out = tmp_path / "out"
    result = cli("finetune", str(qwen), str(example), "-o", str(out), "--max-steps", "24", "--lr", "1e-2",
                 "--skip-bad", "--max-pixels", "12544", "--save-every", "12", "--eval-ratio", "0.3", "--json")  # fmt: skip
    summary = json_of(result)
    assert summary["steps"] == 24 and summary["final_loss"] < summary["first_loss"] / 2
    assert summary["skipped_rows"] == 2 and summary["eval_loss"] is not None and summary["train_tokens"] > 0
    assert {"output", "tokens_per_s", "peak_rss_mb"} <= set(summary)
    names = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "metrics.jsonl", "loss.png", "train_args.json",
            "checkpoint-12"} <= names  # fmt: skip
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"step", "epoch", "loss", "lr", "grad_norm", "tokens_per_s"} <= set(rows[0])
    assert any("eval_loss" in r for r in rows)
    peft_model(qwen_reference(qwen), out)


def test_kill_and_resume_reproduce_the_uninterrupted_adapter(qwen, data, tmp_path):
    """A run killed with SIGKILL after a checkpoint, resumed with --resume, ends with the adapter of an
    uninterrupted run (LoRA dropout on: its masks are replayed too). Every run is its own process: in
    this one, an earlier test's Paddle Inference predictor (OCR) shifts later float rounding by ~1e-7."""
    args = ["--max-steps", "30", "--lr", "1e-2", "--save-every", "3", "--keep-checkpoints", "20", "--lora-dropout", "0.1"]
    env = {**os.environ, "MIX_HOME": str(tmp_path / "home")}

    log = tmp_path / "stderr.log"

    def finetune(out, *extra):
        command = [sys.executable, "-m", "mixcli.cli.app", "finetune", str(qwen), str(data / "all.jsonl"), "-o", str(out)]
        with log.open("ab") as err:
            return subprocess.Popen([*command, *args, *extra], env=env, stdout=subprocess.DEVNULL, stderr=err)

    def finish(proc):
        assert proc.wait(timeout=300) == 0, log.read_text(errors="replace")[-2000:]

    whole, killed = tmp_path / "whole", tmp_path / "killed"
    finish(finetune(whole))
    proc = finetune(killed)
    deadline = time.time() + 120
    while not (killed / "checkpoint-6").is_dir() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    assert (killed / "checkpoint-6").is_dir() and not (killed / "adapter_model.safetensors").exists()
    finish(finetune(killed, "--resume"))
    ours, theirs = adapter_tensors(killed), adapter_tensors(whole)
    assert ours.keys() == theirs.keys()
    for key in ours:
        np.testing.assert_array_equal(ours[key], theirs[key])


def test_two_processes_equal_gradient_accumulation(cli, qwen, data, tmp_path):
    """--nproc 2 (paddle.distributed.launch, gloo) trains as one process with --grad-accum 2."""
    args = ["--max-steps", "3", "--lr", "1e-2", "--lora-dropout", "0.1", "--json"]
    one = json_of(cli("finetune", str(qwen), str(data / "all.jsonl"), "-o", str(tmp_path / "one"), "--grad-accum", "2", *args))
    two = json_of(cli("finetune", str(qwen), str(data / "all.jsonl"), "-o", str(tmp_path / "two"), "--nproc", "2", *args))
    assert two["processes"] == 2 and one["processes"] == 1
    assert two["final_loss"] == pytest.approx(one["final_loss"], rel=1e-5)
    ours, theirs = adapter_tensors(tmp_path / "two"), adapter_tensors(tmp_path / "one")
    for key in ours:
        np.testing.assert_allclose(ours[key], theirs[key], rtol=1e-5, atol=1e-6)


@pytest.fixture
def bad_data(data, tmp_path):
    missing = dict(ROWS["single"], id="lost", image="nowhere.png")
    return {
        "missing-image": (write_rows(data / "missing.jsonl", [ROWS["single"], missing]), "row 2 (id lost): image not found"),
        "empty": (write_rows(data / "empty.jsonl", []), "has no rows"),
        "unreadable": (data / "absent.jsonl", "dataset not found"),
    }


@pytest.mark.parametrize("case", ["missing-image", "empty", "unreadable"])
def test_bad_data_is_one_line(cli, qwen, bad_data, tmp_path, case):
    path, expected = bad_data[case]
    out = tmp_path / "out"
    line = error_line(cli("finetune", str(qwen), str(path), "-o", str(out), "--max-steps", "1"))
    assert expected in line and not out.exists()


def test_rows_over_max_length_are_skipped_and_reported(cli, qwen, data, tmp_path):
    result = cli("finetune", str(qwen), str(data / "all.jsonl"), "-o", str(tmp_path / "out"), "--max-steps", "1",
                 "--max-length", "60", "--json")  # fmt: skip
    summary = json_of(result)
    assert summary["skipped_rows"] == 2 and "rows over --max-length 60 left out" in result.stderr
    line = error_line(cli("finetune", str(qwen), str(data / "all.jsonl"), "-o", str(tmp_path / "o2"), "--max-length", "10"))
    assert "longer than --max-length 10" in line


def test_unknown_targets_resume_and_output_folder(cli, qwen, internvl, data, tmp_path):
    out = tmp_path / "out"
    line = error_line(cli("finetune", str(qwen), str(data / "single.jsonl"), "-o", str(out), "--lora-targets", "q_proj,wqkv"))
    assert "wqkv" in line and "down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj" in line
    json_of(cli("finetune", str(qwen), str(data / "single.jsonl"), "-o", str(out), "--max-steps", "2", "--save-every", "1", "--json"))
    line = error_line(cli("finetune", str(qwen), str(data / "single.jsonl"), "-o", str(out), "--max-steps", "2"))
    assert "not empty" in line and "--force" in line
    line = error_line(cli("finetune", str(internvl), str(data / "single.jsonl"), "-o", str(out), "--resume"))
    assert "another model" in line
    assert json_of(cli("finetune", str(qwen), str(data / "single.jsonl"), "-o", str(out), "--max-steps", "1",
                       "--force", "--json"))["steps"] == 1  # fmt: skip
    assert not (out / "checkpoint-1").exists()


def test_recompute_gives_the_same_gradients(qwen, data):
    """--recompute runs each decoder block again in backward: same loss, same LoRA gradients."""
    from mixcli.train.loop import sample_loss

    grads = []
    for recompute in (False, True):
        model, _, lora = trainable(qwen)
        random_adapter(lora)
        model.language_model.recompute = recompute
        (sample,) = samples(model, data / "multi-turn-system.jsonl")
        sample_loss(model, sample).backward()
        grads.append([layer.lora_A.grad.numpy() for layer in lora.values()])
    for plain, again in zip(*grads):
        np.testing.assert_allclose(again, plain, rtol=1e-5, atol=1e-7)
