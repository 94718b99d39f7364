"""The checkpoint forms people really have, each made from the same tiny pipeline: the published one (the SD1.5
VAE's legacy attention names, text encoders with `text_model.` names and a `position_ids` buffer), tokenizers
saved by transformers 5 (tokenizer.json + tokenizer_config.json only) and tokenizers without
special_tokens_map.json. Each gives transformers' token ids and diffusers' image, for SD1.5 and SDXL, as a
diffusers folder and as the --config folder of a single-file checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import error_line
from sd_ref import reference_pipeline, write_sd15, write_sdxl
from test_clip import PROMPTS, reference_ids
from test_generate import psnr

from mixcli.diffusion.clip import CLIPTokenizer
from mixcli.diffusion.pipeline import Request, load_pipeline, seeded_noise

LEGACY_VAE = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
TOKENIZERS = {"sd15": ("tokenizer",), "sdxl": ("tokenizer", "tokenizer_2")}
FORMS = ("published", "transformers5", "no_special_tokens_map")
TOKENIZER_FORMS = ("transformers5", "no_special_tokens_map")
PROMPT = "a photo of a cat!"  # "!" is SDXL's second pad token, matched as a special token


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """diffusers' side on one thread: on a shared CPU torch's threads wait on each other (a tiny step took 30 s, not 0.6)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _rewrite(file: Path, rename, extra: dict | None = None) -> None:
    from safetensors.torch import load_file, save_file

    tensors = {rename(k): v for k, v in load_file(str(file)).items()}
    save_file({**tensors, **(extra or {})}, str(file), metadata={"format": "pt"})


def published(folder: Path) -> None:
    """The names stable-diffusion-v1-5 publishes: the VAE's mid-block attention as diffusers' old AttentionBlock
    named it, and text encoders under `text_model.` with the position_ids buffer."""

    def vae_name(name: str) -> str:
        for new, old in LEGACY_VAE.items():
            name = name.replace(f"mid_block.attentions.0.{new}.", f"mid_block.attentions.0.{old}.")
        return name

    _rewrite(folder / "vae" / "diffusion_pytorch_model.safetensors", vae_name)
    for encoder in ("text_encoder", "text_encoder_2"):
        if (folder / encoder).is_dir():
            ids = {"text_model.embeddings.position_ids": torch.arange(77, dtype=torch.int64)[None]}
            _rewrite(folder / encoder / "model.safetensors", lambda k: k if k.startswith("text_") else f"text_model.{k}", ids)


def transformers5(folder: Path) -> None:
    """Each tokenizer folder as transformers 5's save_pretrained writes it."""
    from transformers import CLIPTokenizer as RefTokenizer

    for name in ("tokenizer", "tokenizer_2"):
        if (folder / name).is_dir():
            tokenizer = RefTokenizer.from_pretrained(str(folder / name))
            shutil.rmtree(folder / name)
            tokenizer.save_pretrained(str(folder / name))
            assert sorted(p.name for p in (folder / name).iterdir()) == ["tokenizer.json", "tokenizer_config.json"]


def no_special_tokens_map(folder: Path) -> None:
    """special_tokens_map.json gone; the special tokens stay in tokenizer_config.json."""
    for name in ("tokenizer", "tokenizer_2"):
        if (folder / name).is_dir():
            (folder / name / "special_tokens_map.json").unlink()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Every form of a tiny SD1.5 and SDXL pipeline: {(arch, form): folder}, "plain" as sd_ref writes it."""
    root = tmp_path_factory.mktemp("forms")
    out = {("sd15", "plain"): write_sd15(root / "sd15"), ("sdxl", "plain"): write_sdxl(root / "sdxl")}
    for arch in ("sd15", "sdxl"):
        for form in FORMS:
            folder = root / f"{arch}-{form}"
            shutil.copytree(out[arch, "plain"], folder)
            globals()[form](folder)
            out[arch, form] = folder
    return out


@pytest.fixture(scope="module")
def plain_images(folders):
    return {arch: np.asarray(_ours(folders[arch, "plain"])) for arch in ("sd15", "sdxl")}


def _request() -> Request:
    return Request(PROMPT, steps=2, size=(32, 32), scheduler="euler", latents=seeded_noise(4)((1, 4, 16, 16)))


def _ours(folder: Path) -> Image.Image:
    return load_pipeline(str(folder)).generate(_request()).images[0]


def _diffusers(folder: Path, guidance: float) -> np.ndarray:
    import diffusers

    pipe = reference_pipeline(folder)
    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    request = _request()
    images = pipe(request.prompt, num_inference_steps=2, height=32, width=32, guidance_scale=guidance,
                  latents=torch.from_numpy(request.latents), output_type="np").images  # fmt: skip
    return (images[0] * 255).round().astype(np.uint8)


@pytest.mark.parametrize("form", TOKENIZER_FORMS)
@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_token_ids_match_transformers_in_every_form(folders, arch, form):
    for name in TOKENIZERS[arch]:
        folder = folders[arch, form] / name
        ids = CLIPTokenizer.from_dir(folder)(PROMPTS)
        np.testing.assert_array_equal(ids, reference_ids(folder, PROMPTS))
        np.testing.assert_array_equal(ids, CLIPTokenizer.from_dir(folders[arch, "plain"] / name)(PROMPTS))


def test_a_token_added_by_a_fine_tune_keeps_its_id(tmp_path, folders):
    """Textual-inversion fine-tunes add tokens; transformers 5 keeps them in tokenizer.json's added_tokens."""
    from transformers import CLIPTokenizer as RefTokenizer

    ref = RefTokenizer.from_pretrained(str(folders["sd15", "plain"] / "tokenizer"))
    ref.add_tokens(["<cat-toy>"])
    ref.save_pretrained(str(tmp_path))
    prompts = ["a <cat-toy> on a chair", "A <CAT-TOY>!", *PROMPTS[:4]]
    ids = CLIPTokenizer.from_dir(tmp_path)(prompts)
    np.testing.assert_array_equal(ids, reference_ids(tmp_path, prompts))
    assert len(ref) - 1 in ids[0]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_every_form_gives_diffusers_image(folders, plain_images, arch, form):
    image = np.asarray(_ours(folders[arch, form]))
    assert np.array_equal(image, plain_images[arch])  # the same weights and token ids, whatever the form
    assert psnr(image, _diffusers(folders[arch, form], 7.5 if arch == "sd15" else 5.0)) >= 35.0


@pytest.mark.parametrize("form", TOKENIZER_FORMS)
@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_single_file_with_a_config_folder_in_every_form(cli, folders, plain_images, tmp_path, arch, form):
    from single_file_ref import write_single_file

    single = write_single_file(folders[arch, "plain"], tmp_path / "model.safetensors")
    out = tmp_path / "single.png"
    result = cli("generate", str(single), PROMPT, "--config", str(folders[arch, form]), "-o", str(out), "--steps", "2",
                 "--size", "32x32", "--scheduler", "euler", "--latents", str(_latents_file(tmp_path)))  # fmt: skip
    assert result.exit_code == 0, result.stderr
    with Image.open(out) as png:  # the CLI's thread setup may round a pixel differently
        assert np.abs(np.asarray(png.convert("RGB"), dtype=int) - plain_images[arch]).max() <= 1


def _latents_file(folder: Path) -> Path:
    np.save(folder / "latents.npy", _request().latents)
    return folder / "latents.npy"


def _broken(folder: Path, tmp_path: Path, damage) -> Path:
    copy = tmp_path / "broken"
    shutil.copytree(folder, copy)
    damage(copy / "tokenizer")
    return copy


@pytest.mark.parametrize(
    "form,damage,named",
    [
        ("transformers5", lambda d: (d / "tokenizer.json").write_text('{"model": '), "tokenizer.json"),
        ("transformers5", lambda d: (d / "tokenizer.json").write_text(json.dumps({"model": {"type": "Unigram"}})), "tokenizer.json"),
        ("transformers5", lambda d: (d / "tokenizer.json").unlink(), "vocab.json"),
        ("plain", lambda d: (d / "merges.txt").write_text("#version: 0.2\na b c\n"), "merges.txt"),
        ("plain", lambda d: (d / "merges.txt").unlink(), "merges.txt"),
        ("plain", lambda d: (d / "vocab.json").write_text("[1, 2"), "vocab.json"),
        ("no_special_tokens_map", lambda d: (d / "tokenizer_config.json").unlink(), "tokenizer_config.json"),
    ],
)
def test_a_missing_or_corrupt_tokenizer_file_is_one_line_naming_it(cli, folders, tmp_path, form, damage, named):
    folder = _broken(folders["sd15", form], tmp_path, damage)
    result = cli("generate", str(folder), "a cat", "-o", str(tmp_path / "x.png"), "--steps", "1", "--size", "32x32")
    assert named in error_line(result) and not (tmp_path / "x.png").exists()


def test_vae_sanitize_is_idempotent(folders):
    from mixcli.diffusion.vae import sanitize
    from mixcli.weights import open_checkpoint

    legacy = open_checkpoint(folders["sd15", "published"] / "vae")
    once = sanitize(legacy)
    assert "encoder.mid_block.attentions.0.to_out.0.bias" in once and not any(".query." in k for k in once)
    assert list(sanitize(once)) == list(once) == list(sanitize(open_checkpoint(folders["sd15", "plain"] / "vae")))
