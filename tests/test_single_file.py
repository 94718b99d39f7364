"""Single-file SD1.5 / SDXL checkpoints: the test writer proven by diffusers' converters, then our split against the folders."""

from __future__ import annotations

import numpy as np
import pytest
from sd_ref import write_sd15, write_sdxl
from single_file_ref import folder_components, ldm_state_dict, to_ldm, write_single_file

from mixcli.diffusion.single_file import detect_architecture, split_single_file
from mixcli.errors import CheckpointError
from mixcli.weights import TensorRef, open_checkpoint, save_safetensors

TEXTS = {"sd15": ("text_encoder",), "sdxl": ("text_encoder", "text_encoder_2")}
# The published configs (stable-diffusion-v1-5, stable-diffusion-xl-base-1.0), the fields that shape the names.
SD15_UNET = {
    "block_out_channels": [320, 640, 1280, 1280], "cross_attention_dim": 768, "layers_per_block": 2,
    "attention_head_dim": 8,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}  # fmt: skip
SDXL_UNET = {
    "block_out_channels": [320, 640, 1280], "cross_attention_dim": 2048, "layers_per_block": 2,
    "attention_head_dim": [5, 10, 20], "transformer_layers_per_block": [1, 2, 10], "use_linear_projection": True,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "addition_embed_type": "text_time", "addition_time_embed_dim": 256, "projection_class_embeddings_input_dim": 2816,
}  # fmt: skip
REAL_VAE = {"block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "latent_channels": 4,
            "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4}  # fmt: skip
CLIP_L = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072}
CLIP_G = {"hidden_size": 1280, "num_hidden_layers": 32, "num_attention_heads": 20, "intermediate_size": 5120,
          "projection_dim": 1280, "architectures": ["CLIPTextModelWithProjection"]}  # fmt: skip


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Tiny random SD1.5 and SDXL pipelines in the diffusers layout, with fp16 variants."""
    root = tmp_path_factory.mktemp("sd")
    return {"sd15": write_sd15(root / "sd15", fp16=True), "sdxl": write_sdxl(root / "sdxl", fp16=True)}


def _split(checkpoint, architecture, configs):
    texts = {c: configs[c] for c in TEXTS[architecture]}
    return split_single_file(checkpoint, architecture, configs["unet"], configs["vae"], texts)


def _folder_configs(folder):
    return folder_components(folder)[1]


def _refs(state: dict) -> tuple[dict[str, TensorRef], list[str]]:
    """Torch tensors as TensorRefs that count their reads."""
    reads = []
    refs = {
        k: TensorRef(v.shape, str(v.dtype).removeprefix("torch."), lambda k=k, v=v: reads.append(k) or v.numpy())
        for k, v in state.items()
    }
    return refs, reads


# --- the writer, proven by diffusers ---------------------------------------------------------


def _diffusers_convert(state: dict, configs: dict, sdxl: bool) -> dict[str, dict]:
    """diffusers' own single-file converters applied to an original-layout state dict."""
    from diffusers.loaders import single_file_utils as su

    out = {
        "unet": su.convert_ldm_unet_checkpoint(state, configs["unet"]),
        "vae": su.convert_ldm_vae_checkpoint(state, configs["vae"]),
        # create_diffusers_clip_model_from_ldm drops `text_model.` for transformers' flat CLIPTextModel
        "text_encoder": {k.removeprefix("text_model."): v for k, v in su.convert_ldm_clip_checkpoint(state).items()},
    }
    if sdxl:
        out["text_encoder_2"] = su.convert_open_clip_checkpoint(None, state, prefix="conditioner.embedders.1.model.")
    return out


@pytest.mark.parametrize("architecture", ["sd15", "sdxl"])
def test_writer_matches_diffusers_converters(folders, architecture):
    import torch

    tensors, configs = folder_components(folders[architecture])
    converted = _diffusers_convert(ldm_state_dict(folders[architecture]), configs, architecture == "sdxl")
    assert set(converted) == set(tensors)
    for component, want in tensors.items():
        got = converted[component]
        assert sorted(got) == sorted(want), component
        assert all(torch.equal(got[k], want[k]) for k in want), component


# --- our split against the folders -----------------------------------------------------------


@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
@pytest.mark.parametrize("architecture", ["sd15", "sdxl"])
def test_split_gives_the_folder_tensors(folders, tmp_path, architecture, fp16):
    path = write_single_file(folders[architecture], tmp_path / "model.safetensors", fp16=fp16, extras=True)
    checkpoint = open_checkpoint(path)
    assert detect_architecture(checkpoint.keys()) == architecture
    parts = _split(checkpoint, architecture, _folder_configs(folders[architecture]))
    assert set(parts) == {"unet", "vae", *TEXTS[architecture]}
    for component, got in parts.items():
        stem = "model" if component.startswith("text") else "diffusion_pytorch_model"
        want = open_checkpoint(folders[architecture] / component / f"{stem}{'.fp16' if fp16 else ''}.safetensors")
        assert sorted(got) == sorted(want), component
        for name, ref in want.items():
            assert isinstance(got[name], TensorRef)
            assert (got[name].shape, got[name].dtype) == (ref.shape, ref.dtype), name
            assert np.array_equal(got[name].numpy(), ref.numpy()), name


def test_split_reads_old_clip_layout_without_text_model(folders):
    refs, _ = _refs(ldm_state_dict(folders["sd15"], legacy_clip=True))
    assert "cond_stage_model.transformer.embeddings.token_embedding.weight" in refs
    got = _split(refs, "sd15", _folder_configs(folders["sd15"]))["text_encoder"]
    want = folder_components(folders["sd15"])[0]["text_encoder"]
    assert sorted(got) == sorted(want)
    assert all(np.array_equal(got[k].numpy(), want[k].numpy()) for k in want)


@pytest.mark.parametrize("architecture", ["sd15", "sdxl"])
def test_split_reads_no_tensor_data(folders, architecture):
    refs, reads = _refs(ldm_state_dict(folders[architecture], extras=True))
    parts = _split(refs, architecture, _folder_configs(folders[architecture]))
    assert reads == []
    # plain renames hand on the checkpoint's own references
    assert parts["unet"]["conv_in.weight"] is refs["model.diffusion_model.input_blocks.0.0.weight"]
    parts["vae"]["decoder.mid_block.attentions.0.to_q.weight"].numpy()
    assert reads == ["first_stage_model.decoder.mid.attn_1.q.weight"]


# --- the published configs: names as the real files have them --------------------------------


def _meta_components(architecture: str) -> dict[str, list[str]]:
    """Parameter names of the full-size diffusers/transformers models, built on the meta device."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with torch.device("meta"):
        models = {
            "unet": UNet2DConditionModel(**(SDXL_UNET if architecture == "sdxl" else SD15_UNET)),
            "vae": AutoencoderKL(**REAL_VAE),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**CLIP_L)),
        }
        if architecture == "sdxl":
            models["text_encoder_2"] = CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_G))
    return {c: list(m.state_dict()) for c, m in models.items()}


def _numbered(names: dict[str, list[str]]) -> tuple[dict, dict]:
    """Stand-in tensors whose value is their index, so every renaming can be traced: (1, 1) weights, (1,) biases."""
    import torch

    tensors, index = {}, {}
    for component, params in names.items():
        tensors[component] = {}
        for name in params:
            index[component, name] = float(len(index))
            shape = (1,) if name.endswith("bias") else (1, 1)
            tensors[component][name] = torch.full(shape, index[component, name])
    return tensors, index


@pytest.mark.parametrize("architecture", ["sd15", "sdxl"])
def test_published_configs_map_like_diffusers(architecture):
    from diffusers.loaders.single_file_utils import CHECKPOINT_KEY_NAMES, infer_diffusers_model_type

    configs = {"unet": SDXL_UNET if architecture == "sdxl" else SD15_UNET, "vae": REAL_VAE,
               "text_encoder": CLIP_L, "text_encoder_2": CLIP_G}  # fmt: skip
    names = _meta_components(architecture)
    tensors, index = _numbered(names)
    state = to_ldm(tensors, configs)
    assert infer_diffusers_model_type(state) == {"sd15": "v1", "sdxl": "xl_base"}[architecture]
    assert CHECKPOINT_KEY_NAMES["v1" if architecture == "sd15" else "open_clip_sdxl"] in state
    converted = _diffusers_convert(state, configs, architecture == "sdxl")
    refs, _ = _refs(state)
    ours = _split(refs, architecture, configs)
    for component, params in names.items():
        assert sorted(converted[component]) == sorted(params), component
        assert sorted(ours[component]) == sorted(params), component
        for name in params:
            assert float(converted[component][name].flatten()[0]) == index[component, name], name
            assert ours[component][name].numpy().flatten()[0] == index[component, name], name


# --- detection and errors --------------------------------------------------------------------


def test_detect_architecture_rejects_other_files(tmp_path):
    junk = save_safetensors({"encoder.weight": np.zeros((2, 2), np.float32), "head.bias": np.zeros(2, np.float32)},
                            tmp_path / "junk.safetensors")  # fmt: skip
    with pytest.raises(CheckpointError, match=r"not an SD1\.5 or SDXL.*(encoder|head)\.") as err:
        detect_architecture(open_checkpoint(junk).keys())
    assert err.value.fix
    sd2 = ["model.diffusion_model.input_blocks.0.0.weight", "cond_stage_model.model.token_embedding.weight"]
    with pytest.raises(CheckpointError, match=r"2\.x"):
        detect_architecture(sd2)
    with pytest.raises(CheckpointError, match="no tensors"):
        detect_architecture([])


def test_missing_vae_tensor_is_named(folders, tmp_path):
    from safetensors.torch import save_file

    state = ldm_state_dict(folders["sd15"])
    del state["first_stage_model.decoder.mid.attn_1.q.weight"]
    save_file(state, str(tmp_path / "broken.safetensors"))
    checkpoint = open_checkpoint(tmp_path / "broken.safetensors")
    with pytest.raises(CheckpointError, match=r"broken\.safetensors lacks 1 tensors of the SD1\.5 vae") as err:
        _split(checkpoint, "sd15", _folder_configs(folders["sd15"]))
    assert "first_stage_model.decoder.mid.attn_1.q.weight" in err.value.problem


def test_unexpected_component_tensor_is_named(folders):
    refs, _ = _refs(ldm_state_dict(folders["sdxl"], extras=True))
    refs["model.diffusion_model.input_blocks.99.0.in_layers.0.weight"] = refs["model.diffusion_model.out.0.weight"]
    with pytest.raises(CheckpointError, match=r"1 tensors .*input_blocks\.99\.0\.in_layers\.0\.weight"):
        _split(refs, "sdxl", _folder_configs(folders["sdxl"]))


def test_wrong_architecture_or_config_is_refused(folders):
    refs, _ = _refs(ldm_state_dict(folders["sdxl"]))
    sd15 = _folder_configs(folders["sd15"])
    with pytest.raises(CheckpointError, match="lacks .* SD1.5 text_encoder.*cond_stage_model"):
        _split(refs, "sd15", {**sd15, "unet": _folder_configs(folders["sdxl"])["unet"], "vae": sd15["vae"]})
    configs = _folder_configs(folders["sdxl"])
    with pytest.raises(CheckpointError, match="class_embed_type='projection'"):
        _split(refs, "sdxl", {**configs, "unet": {**configs["unet"], "class_embed_type": "projection"}})
