"""A Stable Diffusion pipeline exported component by component (text encoders, UNet, VAE decoder and
encoder) as Paddle static graphs or ONNX, each checked on real inputs at export, with the tokenizer,
scheduler and component configs beside them; and the Paddle Inference stand-ins for those components
that let diffusion.pipeline.StableDiffusion run an export through its own loop (`mix generate OUT`).

Every graph takes one image at a fixed size (the export's --size): the stand-ins run a batch (guidance's
two halves, several images) one row at a time."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import paddle
from paddle import nn

from ..errors import InputError, MixError
from . import graphs
from .graphs import Component, Written

PROMPT = "a photograph of an astronaut riding a horse"  # the check's real input


# --- the graphs: the dynamic layers with positional tensor inputs and tuple outputs -----------------


class TextEncoderGraph(nn.Layer):
    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids):
        out = self.encoder(input_ids)
        if out.text_embeds is None:
            return out.last_hidden_state, out.penultimate
        return out.last_hidden_state, out.penultimate, out.text_embeds


class UNetGraph(nn.Layer):
    """The UNet with its optional inputs (SDXL's text_embeds and time_ids, LCM's timestep_cond) in ``extra``'s order."""

    def __init__(self, unet, extra: list[str]):
        super().__init__()
        self.unet = unet
        self.extra = extra

    def forward(self, sample, timestep, encoder_hidden_states, first=None, second=None, third=None):
        named = dict(zip(self.extra, [first, second, third]))
        return self.unet(sample, timestep, encoder_hidden_states, **named)


class VAEDecoderGraph(nn.Layer):
    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, latents):
        return self.vae.decode(latents)


class VAEEncoderGraph(nn.Layer):
    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, image):
        return self.vae.encode(image)


def components(pipe, size: tuple[int, int]) -> list[tuple[Component, str]]:
    """Each component of a loaded pipeline with real inputs at ``size`` (width, height), and its file stem."""
    from ..diffusion.pipeline import guidance_embedding, preprocess_image, seeded_noise
    from ..diffusion.schedulers import make_scheduler

    width, height = size
    found = []
    for i, (tokenizer, encoder) in enumerate(zip(pipe.tokenizers, pipe.text_encoders)):
        name = "text_encoder" if i == 0 else f"text_encoder_{i + 1}"
        outputs = ["last_hidden_state", "penultimate"] + (["text_embeds"] if encoder.text_projection is not None else [])
        found.append((Component(name, TextEncoderGraph(encoder), ["input_ids"], outputs, [tokenizer([PROMPT])]), f"{name}/model"))
    cond = {k: v.numpy() for k, v in pipe.encode_prompt(PROMPT, None, False, 1, (height, width)).items()}
    extra = [k for k in ("text_embeds", "time_ids") if k in cond]
    cfg = pipe.unet.config
    f = pipe.scale_factor
    latents = seeded_noise(0)((1, cfg.in_channels, height // f, width // f))
    scheduler = make_scheduler(pipe.scheduler_config, None)
    scheduler.set_timesteps(10)
    unet_inputs = [latents * np.float32(scheduler.init_noise_sigma), np.array([scheduler.timesteps[0]], np.float32),
                   cond["encoder_hidden_states"], *(cond[k] for k in extra)]  # fmt: skip
    if cfg.time_cond_proj_dim is not None:
        extra.append("timestep_cond")
        unet_inputs.append(guidance_embedding(np.array([7.0], np.float32), cfg.time_cond_proj_dim))
    names = ["sample", "timestep", "encoder_hidden_states", *extra]
    found.append((Component("unet", UNetGraph(pipe.unet, extra), names, ["noise_pred"], unet_inputs), "unet/model"))
    vae_latents = seeded_noise(1)((1, pipe.vae.config.latent_channels, height // f, width // f))
    found.append((Component("vae_decoder", VAEDecoderGraph(pipe.vae), ["latents"], ["image"], [vae_latents]), "vae/decoder"))
    image = preprocess_image(sample_picture(width, height), width, height)
    found.append((Component("vae_encoder", VAEEncoderGraph(pipe.vae), ["image"], ["mean", "logvar"], [image]), "vae/encoder"))
    return found


def sample_picture(width: int, height: int):
    """A smooth colour picture: the VAE encoder's real input at export."""
    from PIL import Image

    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([x / max(width - 1, 1), y / max(height - 1, 1), 0.5 + 0.5 * np.sin((x + y) / 7.0)], axis=-1)
    return Image.fromarray((rgb * 255).round().astype(np.uint8))


# --- the export ----------------------------------------------------------------------------------


def export_pipeline(name: str, folder: Path, fmt: str, size: tuple[int, int] | None = None,
                    report: Callable[[Written], None] | None = None, allow_pickle: bool = False,
                    external_above: int | None = None) -> dict:  # fmt: skip
    """Write the pipeline ``name`` into the (staging) ``folder`` as ``fmt`` ("paddle" or "onnx"); returns
    the manifest. Each component is checked as it is written; a failure raises MixError naming it."""
    from ..diffusion.pipeline import StableDiffusion, _parts, check_size

    parts = _parts(name, None, None, allow_pickle)
    pipe = StableDiffusion(parts, "float32")
    size = size or pipe.native_size()
    check_size(*size, pipe.scale_factor)
    written = {}
    for component, stem in components(pipe, size):
        written[component.name] = _write(component, folder, stem, fmt, external_above)
        if report is not None:
            report(written[component.name])
    copy_pipeline_files(parts, folder)
    settings = {"size": list(size), "dtype": "float32", "batch": 1, "architecture": parts.architecture}
    manifest = graphs.manifest_head("diffusion", fmt, name, settings)
    manifest["components"] = {n: w.record() for n, w in written.items()}
    manifest["files"] = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) + [graphs.MANIFEST]
    graphs.write_manifest(folder, manifest)
    return manifest


def _write(component: Component, folder: Path, stem: str, fmt: str, external_above: int | None) -> Written:
    if fmt == "paddle":
        return graphs.export_static(component, folder, stem)
    from .onnx import EXTERNAL_DATA_BYTES, export_onnx

    return export_onnx(component, folder, stem, EXTERNAL_DATA_BYTES if external_above is None else external_above)


def copy_pipeline_files(parts, folder: Path) -> None:
    """model_index.json, each component's config, the scheduler's config and the tokenizer folders."""
    _json(folder / "model_index.json", parts.pipeline_config)
    for component, config in parts.configs.items():
        target = folder / component / ("scheduler_config.json" if component == "scheduler" else "config.json")
        _json(target, config)
    for tokenizer, source in parts.tokenizer_dirs.items():
        shutil.copytree(source, folder / tokenizer, dirs_exist_ok=True)


def _json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


# --- running an export ---------------------------------------------------------------------------


class StaticComponent:
    """A component's Paddle Inference predictor, fed one row of a batch at a time."""

    def __init__(self, folder: Path, record: dict, name: str):
        self.name = name
        self.record = record
        prefix = folder / record["files"][0][: -len(".json")]
        self.predictor = graphs.Predictor(prefix)
        self.inputs = {t["role"]: t for t in record["inputs"]}

    def rows(self, named: dict[str, np.ndarray], shared: tuple[str, ...] = ()) -> list[np.ndarray]:
        """Run every row of the batch inputs (``shared`` ones go whole to every row); outputs concatenated."""
        batch = next(len(a) for k, a in named.items() if k not in shared)
        pieces = []
        for i in range(batch):
            row = [named[k] if k in shared else named[k][i : i + 1] for k in self.inputs]
            self._check_shapes(row)
            pieces.append(self.predictor(*row))
        return [np.concatenate(parts) for parts in zip(*pieces)]

    def _check_shapes(self, row: list[np.ndarray]) -> None:
        for array, spec in zip(row, self.inputs.values()):
            if list(array.shape) != spec["shape"]:
                raise InputError(f"the exported {self.name} takes {spec['role']} of shape {tuple(spec['shape'])}, "
                                 f"this run gives {tuple(array.shape)}",
                                 "run at the export's --size (see manifest.json), or export again with --size")  # fmt: skip


def _numpy(x) -> np.ndarray:
    return x.numpy() if isinstance(x, paddle.Tensor) else np.asarray(x)


class StaticUNet(StaticComponent):
    """Called as the pipeline calls UNet2DConditionModel."""

    def __init__(self, folder: Path, record: dict, config: dict):
        from ..diffusion.unet import UNetConfig

        super().__init__(folder, record, "unet")
        self.config = UNetConfig.from_dict(config)

    def __call__(self, sample, timestep, encoder_hidden_states=None, **extra) -> paddle.Tensor:
        residuals = [k for k in ("down_residuals", "mid_residual") if extra.pop(k, None) is not None]
        if residuals:
            raise InputError("a ControlNet cannot join an exported pipeline", "run it on the original checkpoint")
        named = {"sample": _numpy(sample), "timestep": np.array([float(timestep)], np.float32),
                 "encoder_hidden_states": _numpy(encoder_hidden_states)}  # fmt: skip
        named.update({k: _numpy(v) for k, v in extra.items() if v is not None})
        return paddle.to_tensor(self.rows(named, shared=("timestep",))[0])


class StaticVAE:
    """Called as the pipeline calls AutoencoderKL: encode (when exported) and decode."""

    def __init__(self, folder: Path, manifest: dict, config: dict):
        from ..diffusion.vae import VAEConfig

        self.config = VAEConfig.from_dict(config)
        parts = manifest["components"]
        self.decoder = StaticComponent(folder, parts["vae_decoder"], "vae_decoder")
        self.encoder = StaticComponent(folder, parts["vae_encoder"], "vae_encoder")

    @property
    def scale_factor(self) -> int:
        return 2 ** (len(self.config.block_out_channels) - 1)

    def encode(self, x):
        mean, logvar = self.encoder.rows({"image": _numpy(x)})
        return paddle.to_tensor(mean), paddle.to_tensor(logvar)

    def decode(self, z):
        return paddle.to_tensor(self.decoder.rows({"latents": _numpy(z)})[0])


class StaticTextEncoder(StaticComponent):
    """Called as the pipeline calls CLIPTextEncoder."""

    def __call__(self, input_ids):
        from ..diffusion.clip import CLIPTextOutput

        out = [paddle.to_tensor(a) for a in self.rows({"input_ids": _numpy(input_ids)})]
        return CLIPTextOutput(out[0], out[1], None, out[2] if len(out) > 2 else None)


def load_exported_pipeline(folder: Path, manifest: dict):
    """A StableDiffusion that runs the export in ``folder`` with Paddle Inference predictors."""
    from ..diffusion.loading import PipelineParts, read_json
    from ..diffusion.pipeline import Networks, StableDiffusion

    if manifest.get("kind") != "diffusion":
        raise MixError(f"{folder} holds a {manifest.get('kind')} export, not a diffusion pipeline", "run it with mix infer")
    if manifest.get("format") != "paddle":
        raise MixError(f"{folder} is an {manifest.get('format')} export, which mix runs only as --format paddle",
                       "run its .onnx files with onnxruntime, or export with --format paddle")  # fmt: skip
    settings, parts = manifest["settings"], manifest["components"]
    texts = sorted(c for c in parts if c.startswith("text_encoder"))
    configs = {c: read_json(folder / c / "config.json") for c in ("unet", "vae", *texts)}
    configs["scheduler"] = read_json(folder / "scheduler" / "scheduler_config.json")
    tokenizers = {c.replace("text_encoder", "tokenizer"): folder / c.replace("text_encoder", "tokenizer") for c in texts}
    pipeline = PipelineParts(settings["architecture"], configs, {}, tokenizers, read_json(folder / "model_index.json"))
    networks = Networks(
        StaticUNet(folder, parts["unet"], configs["unet"]), StaticVAE(folder, manifest, configs["vae"]),
        [StaticTextEncoder(folder, parts[c], c) for c in texts], tuple(settings["size"]),
    )  # fmt: skip
    return StableDiffusion(pipeline, "float32", networks)
