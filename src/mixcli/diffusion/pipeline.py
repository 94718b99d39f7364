"""Text-to-image and image-to-image with Stable Diffusion 1.5 and SDXL, step for step as diffusers'
StableDiffusion(XL)(Img2Img)Pipeline: prompt encoding, classifier-free guidance, the denoising loop
and VAE decoding. Latents and scheduler math stay in NumPy; the networks run in Paddle."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from ..errors import InputError
from .control import Control
from .loading import PipelineParts

Noise = Callable[[tuple[int, ...]], np.ndarray]  # standard normal float32 of a shape
# diffusers' __call__ defaults per architecture.
DEFAULT_GUIDANCE = {"sd15": 7.5, "sdxl": 5.0}
DEFAULT_STEPS = 50


@dataclass
class Request:
    """One generation: what `mix generate` takes, with the pipeline defaults filled in later."""

    prompt: str
    negative_prompt: str | None = None
    steps: int = DEFAULT_STEPS
    guidance: float | None = None  # None: the architecture's default
    size: tuple[int, int] | None = None  # (width, height); None: the model's native size
    num_images: int = 1
    seed: int = 0
    scheduler: str | None = None  # None: the checkpoint's scheduler_config.json
    latents: np.ndarray | None = None  # (num_images, C, H/f, W/f) unscaled standard normal
    image: Image.Image | None = None  # img2img source
    strength: float = 0.8
    control: Control | None = None  # ControlNet settings, run by the pipeline's ``controlnet``


@dataclass
class Result:
    """The images and how they were made: ``steps`` as requested (what reproduces the run), and
    ``evaluations``, the UNet passes the scheduler ran for them (PNDM repeats its second step; img2img
    runs only the tail of the schedule)."""

    images: list[Image.Image]
    seed: int
    steps: int
    guidance: float
    scheduler: str
    size: tuple[int, int]
    timings: dict = field(default_factory=dict)
    evaluations: int = 0
    dtype: str = "float32"
    loras: list = field(default_factory=list)  # the LoRA adapters (lora.LoraSpec) merged into the pipeline


@dataclass
class Networks:
    """The networks a pipeline runs: its Paddle layers, or stand-ins called the same way (the Paddle
    Inference predictors of a static export, export.diffusion), with the one size they take."""

    unet: object
    vae: object
    text_encoders: list
    size: tuple[int, int] | None = None  # (width, height) when the networks take only that size


def build_networks(parts: PipelineParts, dtype: str, vae_dtype: str) -> Networks:
    """The Paddle layers of a pipeline from its configs and weights."""
    from .clip import build_text_encoder
    from .unet import build_unet
    from .vae import build_vae

    texts = sorted(c for c in parts.weights if c.startswith("text_encoder"))
    return Networks(
        build_unet(parts.configs["unet"], parts.weights["unet"], dtype),
        build_vae(parts.configs["vae"], parts.weights["vae"], vae_dtype),
        [build_text_encoder(parts.configs[c], parts.weights[c], dtype) for c in texts],
    )


class StableDiffusion:
    """A loaded SD1.5 or SDXL pipeline; ``networks`` replaces the layers built from ``parts.weights``."""

    def __init__(self, parts: PipelineParts, dtype: str = "float32", networks: Networks | None = None):
        from .clip import CLIPTokenizer

        self.architecture = parts.architecture
        self.scheduler_config = parts.configs["scheduler"]
        self.force_zeros = parts.pipeline_config.get("force_zeros_for_empty_prompt", True)
        # diffusers decodes in float32 when a half-precision VAE sets force_upcast.
        self.vae_dtype = "float32" if parts.configs["vae"].get("force_upcast", False) else dtype
        networks = networks or build_networks(parts, dtype, self.vae_dtype)
        self.unet, self.vae, self.text_encoders = networks.unet, networks.vae, networks.text_encoders
        self.fixed_size = networks.size
        self.tokenizers = [CLIPTokenizer.from_dir(parts.tokenizer_dirs[c]) for c in sorted(parts.tokenizer_dirs)]
        self.dtype = dtype
        self.loras = list(parts.loras)
        self.controlnet = None  # a ControlNetModel (controlnet.load_controlnet) for requests with ``control``

    @property
    def scale_factor(self) -> int:
        return self.vae.scale_factor

    def native_size(self) -> tuple[int, int]:
        if self.fixed_size is not None:
            return self.fixed_size
        side = self.unet.config.sample_size * self.scale_factor
        return side, side

    def generate(self, request: Request, noise: Noise | None = None, on_step: Callable[[int, int], None] | None = None) -> Result:
        """Run one request; ``noise`` draws every random tensor (default: a NumPy generator seeded with
        request.seed), in diffusers' order: img2img encoding, initial noise, then the scheduler's steps."""
        from .schedulers import make_scheduler

        start = time.perf_counter()
        noise = noise or seeded_noise(request.seed)
        guidance = DEFAULT_GUIDANCE[self.architecture] if request.guidance is None else request.guidance
        width, height = self._size(request)
        scheduler = make_scheduler(self.scheduler_config, request.scheduler)
        check_steps(request.steps)
        scheduler.set_timesteps(request.steps)
        cfg = guidance > 1 and self.unet.config.time_cond_proj_dim is None
        cond = self.encode_prompt(request.prompt, request.negative_prompt, cfg, request.num_images, (height, width))
        encoded = time.perf_counter()
        timesteps, latents = self._initial_latents(request, scheduler, noise, width, height)
        control = self._control_run(request, len(timesteps), cfg, width, height)
        latents, step_times = self._denoise(latents, timesteps, scheduler, cond, guidance, cfg, noise, on_step, control)
        denoised = time.perf_counter()
        images = self.decode(latents)
        end = time.perf_counter()
        timings = {
            "encode_s": round(encoded - start, 4),
            "steps_s": step_times,
            "denoise_s": round(denoised - encoded, 4),
            "decode_s": round(end - denoised, 4),
            "total_s": round(end - start, 4),
        }
        return Result(
            images, request.seed, request.steps, guidance, scheduler.name, (width, height), timings, len(timesteps), self.dtype,
            list(self.loras),
        )

    # --- steps of a run -------------------------------------------------------------------------

    def _size(self, request: Request) -> tuple[int, int]:
        if request.size is None and request.image is not None:
            return image_size(request.image, self.scale_factor)
        if request.size is None and request.control is not None:  # diffusers' ControlNet pipelines: the control image's
            return image_size(request.control.image, self.scale_factor)
        width, height = request.size if request.size is not None else self.native_size()
        check_size(width, height, self.scale_factor)
        return width, height

    def encode_prompt(self, prompt: str, negative: str | None, cfg: bool, copies: int, size: tuple[int, int]) -> dict:
        """Text conditioning for the UNet, negative first when guiding (diffusers' encode_prompt)."""
        import paddle

        if self.architecture == "sd15":
            embeds = self._sd15_embeds(prompt)
            neg = self._sd15_embeds(negative or "") if cfg else None
            extra = {}
        else:
            embeds, pooled = self._sdxl_embeds(prompt)
            if cfg and negative is None and self.force_zeros:
                neg, neg_pooled = paddle.zeros_like(embeds), paddle.zeros_like(pooled)
            elif cfg:
                neg, neg_pooled = self._sdxl_embeds(negative)
            time_ids = paddle.to_tensor([[*size, 0, 0, *size]], dtype=embeds.dtype)  # original, crop, target
            pooled = _repeat(pooled, copies)
            time_ids = _repeat(time_ids, copies)
            if cfg:
                pooled = paddle.concat([_repeat(neg_pooled, copies), pooled])
                time_ids = paddle.concat([time_ids, time_ids])
            extra = {"text_embeds": pooled, "time_ids": time_ids}
        embeds = _repeat(embeds, copies)
        if cfg:
            embeds = paddle.concat([_repeat(neg, copies), embeds])
        return {"encoder_hidden_states": embeds, **extra}

    def _sd15_embeds(self, text: str):
        import paddle

        ids = paddle.to_tensor(self.tokenizers[0]([text]))
        return self.text_encoders[0](ids).last_hidden_state

    def _sdxl_embeds(self, text: str):
        """Penultimate hidden states of both encoders side by side, and the second one's projection."""
        import paddle

        states, pooled = [], None
        for tokenizer, encoder in zip(self.tokenizers, self.text_encoders):
            out = encoder(paddle.to_tensor(tokenizer([text])))
            states.append(out.penultimate)
            pooled = out.text_embeds if out.text_embeds is not None else pooled
        return paddle.concat(states, axis=-1), pooled

    def _initial_latents(self, request: Request, scheduler, noise: Noise, width: int, height: int):
        shape = (request.num_images, self.unet.config.in_channels, height // self.scale_factor, width // self.scale_factor)
        if request.image is None:
            latents = request.latents if request.latents is not None else noise(shape)
            check_latents(latents, shape)
            return scheduler.timesteps, latents.astype(np.float32) * scheduler.init_noise_sigma
        timesteps = img2img_timesteps(scheduler, request.steps, request.strength)
        encoded = np.repeat(self.encode_image(preprocess_image(request.image, width, height), noise), request.num_images, axis=0)
        start = request.latents if request.latents is not None else noise(encoded.shape)
        check_latents(start, encoded.shape)
        return timesteps, scheduler.add_noise(encoded, start.astype(np.float32), timesteps[0])

    def _control_run(self, request: Request, steps: int, cfg: bool, width: int, height: int):
        """The ControlNet's part in this run (controlnet.ControlRun), or None without ``request.control``."""
        if request.control is None:
            return None
        if self.controlnet is None:
            raise InputError("the request has ControlNet settings but no ControlNet is loaded", "load one with controlnet.load_controlnet")
        from .controlnet import ControlRun

        return ControlRun(self.controlnet, request.control.pixels(width, height), request.control, steps, cfg)

    def _denoise(self, latents, timesteps, scheduler, cond: dict, guidance: float, cfg: bool, noise: Noise, on_step,
                 control=None):  # fmt: skip
        """The sampling loop; returns the final latents and each step's seconds."""
        import paddle

        timestep_cond = None
        if self.unet.config.time_cond_proj_dim is not None:
            w = np.full(latents.shape[0], guidance - 1, dtype=np.float32)
            timestep_cond = paddle.to_tensor(guidance_embedding(w, self.unet.config.time_cond_proj_dim), dtype=self.dtype)
        step_times = []
        for i, t in enumerate(timesteps):
            tic = time.perf_counter()
            model_input = np.concatenate([latents, latents]) if cfg else latents
            x = paddle.to_tensor(scheduler.scale_model_input(model_input, t), dtype=self.dtype)
            residuals = control.residuals(i, x, float(t), cond) if control is not None else {}
            with paddle.no_grad():
                out = self.unet(x, float(t), timestep_cond=timestep_cond, **cond, **residuals)
            pred = out.astype("float32").numpy()
            if cfg:
                uncond, text = np.split(pred, 2)
                pred = uncond + guidance * (text - uncond)
            step_noise = noise(latents.shape) if scheduler.needs_noise else None
            latents = scheduler.step(pred, t, latents, noise=step_noise).astype(np.float32)
            step_times.append(round(time.perf_counter() - tic, 4))
            if on_step is not None:
                on_step(i + 1, len(timesteps))
        return latents, step_times

    def encode_image(self, pixels: np.ndarray, noise: Noise) -> np.ndarray:
        """Scaled latents of (1, 3, H, W) pixels in [-1, 1] (`preprocess_image`), sampled from the VAE's
        posterior (diffusers' retrieve_latents)."""
        import paddle

        x = paddle.to_tensor(pixels, dtype=self.vae_dtype)
        with paddle.no_grad():
            mean, logvar = self.vae.encode(x)
        mean, logvar = mean.astype("float32").numpy(), logvar.astype("float32").numpy()
        sample = mean + np.exp(0.5 * logvar) * noise(mean.shape)
        cfg = self.vae.config
        shift = cfg.shift_factor or 0.0
        return ((sample - shift) * cfg.scaling_factor).astype(np.float32)

    def decode(self, latents: np.ndarray) -> list[Image.Image]:
        """PIL images from final latents (diffusers: latents / scaling_factor, VAE decode, postprocess)."""
        import paddle

        cfg = self.vae.config
        z = latents / cfg.scaling_factor + (cfg.shift_factor or 0.0)
        with paddle.no_grad():
            images = self.vae.decode(paddle.to_tensor(z, dtype=self.vae_dtype)).astype("float32").numpy()
        return to_pil(images)


# --- pieces shared with tests and the CLI ------------------------------------------------------


def seeded_noise(seed: int) -> Noise:
    """Standard normal float32 draws from one NumPy generator: reproducible on every device."""
    rng = np.random.default_rng(seed)
    return lambda shape: rng.standard_normal(shape, dtype=np.float32)


def to_pil(images: np.ndarray) -> list[Image.Image]:
    """(B, 3, H, W) in [-1, 1] → PIL images, rounded as diffusers' numpy_to_pil."""
    pixels = np.clip(images / 2 + 0.5, 0.0, 1.0).transpose(0, 2, 3, 1)
    return [Image.fromarray(p) for p in (pixels * 255).round().astype(np.uint8)]


def image_size(image: Image.Image, factor: int) -> tuple[int, int]:
    """An img2img source's (width, height) rounded down to a multiple of the VAE's factor, as diffusers'
    VaeImageProcessor.get_default_height_width does."""
    width, height = (side - side % factor for side in image.size)
    if width < factor or height < factor:
        w, h = image.size
        raise InputError(f"the image is {w}x{h}, smaller than the {factor}x{factor} pixels img2img needs", "pass a larger image")
    return width, height


def preprocess_image(image: Image.Image, width: int, height: int) -> np.ndarray:
    """(1, 3, H, W) float32 in [-1, 1], as diffusers' VaeImageProcessor.preprocess: PIL's Lanczos resize to
    (width, height) (a copy when the size matches), x / 255 in float32, then 2x - 1."""
    resized = image.convert("RGB").resize((width, height), Image.LANCZOS)
    x = np.asarray(resized, dtype=np.float32) / np.float32(255.0)  # (H, W, 3)
    return (np.float32(2.0) * x - np.float32(1.0)).transpose(2, 0, 1)[None].copy()


def img2img_timesteps(scheduler, steps: int, strength: float):
    """The tail of the schedule that img2img runs (diffusers' get_timesteps)."""
    if not 0.0 < strength <= 1.0:
        raise InputError(f"--strength {strength} is outside (0, 1]", "pass a strength such as 0.6")
    t_start = steps - min(int(steps * strength), steps)
    if steps - t_start < 1:
        raise InputError(f"--strength {strength} leaves no step of {steps} to run", "raise --strength or --steps")
    scheduler.start_at(t_start * scheduler.order)
    return scheduler.timesteps[t_start * scheduler.order :]


def guidance_embedding(w: np.ndarray, dim: int) -> np.ndarray:
    """Sinusoidal embedding of (guidance - 1) for LCM-distilled UNets (diffusers' get_guidance_scale_embedding)."""
    w = w.astype(np.float32) * 1000.0
    half = dim // 2
    freqs = np.exp(np.arange(half, dtype=np.float32) * -(np.log(10000.0) / (half - 1)))
    emb = w[:, None] * freqs[None, :]
    emb = np.concatenate([np.sin(emb), np.cos(emb)], axis=1)
    return np.pad(emb, ((0, 0), (0, dim % 2))).astype(np.float32)


def check_size(width: int, height: int, factor: int) -> None:
    multiple = max(8, factor)
    if width < multiple or height < multiple or width % multiple or height % multiple:
        raise InputError(f"size {width}x{height} is not a multiple of {multiple}", f"pass --size with multiples of {multiple}, e.g. 512x512")


def check_steps(steps: int) -> None:
    if steps < 1:
        raise InputError(f"--steps {steps} is below 1", "pass --steps 1 or more (25-50 is typical)")


def check_latents(latents: np.ndarray, shape: tuple[int, ...]) -> None:
    if tuple(latents.shape) != tuple(shape):
        raise InputError(f"the latents have shape {tuple(latents.shape)}, this run needs {tuple(shape)}", "pass latents matching --size and --num-images")


def _repeat(x, copies: int):
    import paddle

    return x if copies == 1 else paddle.repeat_interleave(x, copies, axis=0)


# --- loading and saving --------------------------------------------------------------------------

TEXT_TO_IMAGE = ("stable_diffusion", "stable_diffusion_xl")


def load_pipeline(
    name: str, dtype: str = "float32", variant: str | None = None, config_dir: str | None = None, allow_pickle: bool = False,
    loras: list | None = None,
) -> StableDiffusion:
    """A pipeline from a registry alias, hub id, diffusers folder or single ``.safetensors`` file, with ``loras``
    (lora.LoraSpec) merged into its weights; or a `mix export --format paddle` folder, run by Paddle Inference."""
    from .lora import apply_loras

    exported = _exported(name)
    if exported is not None:
        if loras:
            raise InputError("LoRA adapters cannot join an exported pipeline", "export the pipeline with them merged, or run the original")
        from ..export.diffusion import load_exported_pipeline

        return load_exported_pipeline(Path(name).expanduser(), exported)

    return StableDiffusion(apply_loras(_parts(name, variant, config_dir, allow_pickle), loras or [], allow_pickle), dtype)


def _exported(name: str) -> dict | None:
    """The manifest of an export folder ``name``, else None."""
    from ..export.graphs import read_manifest

    path = Path(name).expanduser()
    return read_manifest(path) if path.is_dir() else None


def _parts(name: str, variant: str | None, config_dir: str | None, allow_pickle: bool) -> PipelineParts:
    from .loading import folder_parts, single_file_parts

    path = Path(name).expanduser()
    if path.is_file():
        if path.suffix != ".safetensors":
            raise InputError(f"{path.name} is not a .safetensors checkpoint", "pass a diffusers folder or a single-file .safetensors")
        return single_file_parts(path, Path(config_dir) if config_dir else None)
    return folder_parts(_pipeline_dir(name), variant, allow_pickle)


def _pipeline_dir(name: str) -> Path:
    from ..errors import MixError
    from ..registry import resolve_model
    from ..vlm import model_dir

    spec = resolve_model(name).spec
    if spec is not None and spec.task == "controlnet":
        raise MixError(f"'{name}' is a ControlNet, not a pipeline", f"pass it as --controlnet {name} beside a Stable Diffusion model")
    if spec is not None and spec.family not in TEXT_TO_IMAGE:
        raise MixError(f"'{name}' is a {spec.task} model, not a text-to-image one", "see `mix models list` for text-to-image models")
    _, folder = model_dir(name)
    if not (folder / "model_index.json").is_file():
        raise MixError(f"{folder} is not a diffusers pipeline (no model_index.json)", "pass a Stable Diffusion folder or .safetensors file")
    return folder


def metadata(request: Request, result: Result, model: str, index: int = 0, latents_file: str | None = None) -> dict[str, str]:
    """What the PNG of image ``index`` records about its making: what was asked for, which is what
    `mix generate` takes to make it again (``steps`` as requested; ``model_evaluations``, the UNet passes
    the scheduler ran, apart). ``parameters`` is the AUTOMATIC1111 line other tools read."""
    width, height = result.size
    fields = {
        "prompt": request.prompt,
        "seed": str(result.seed),
        "steps": str(result.steps),
        "guidance": _number(result.guidance),
        "scheduler": result.scheduler,
        "size": f"{width}x{height}",
        "model": model,
        "dtype": result.dtype,
        "model_evaluations": str(result.evaluations),
    }
    if request.negative_prompt is not None:  # absent and empty differ: SDXL zeroes an absent one
        fields["negative_prompt"] = request.negative_prompt
    extra = ""
    if request.image is not None:
        fields["strength"] = _number(request.strength)
        extra += f", Denoising strength: {fields['strength']}"
    if request.num_images > 1:  # image k of a batch is reproduced by the whole batch
        fields["num_images"], fields["image_index"] = str(request.num_images), str(index + 1)
        extra += f", Batch size: {request.num_images}, Batch pos: {index}"
    if latents_file is not None:  # the initial noise came from this file, not from the seed
        fields["latents"] = latents_file
    if result.loras:  # one `--lora` value a line; the parameters line gets a "Lora:" item each
        fields["loras"] = "\n".join(lora_text(spec) for spec in result.loras)
        extra += "".join(f", Lora: {lora_text(spec)}" for spec in result.loras)
    if request.control is not None:
        from .control import metadata_fields, parameters_text

        fields.update(metadata_fields(request.control))
        extra += parameters_text(request.control)
    negative = f"\nNegative prompt: {request.negative_prompt}" if request.negative_prompt else ""
    fields["parameters"] = (
        f"{request.prompt}{negative}\nSteps: {result.steps}, Sampler: {result.scheduler}, CFG scale: {fields['guidance']}, "
        f"Seed: {result.seed}, Size: {width}x{height}, Model: {model}{extra}"
    )
    return fields


def lora_text(spec) -> str:
    """A LoRA as `--lora` takes it: PATH:WEIGHT."""
    return f"{spec.path}:{_number(spec.weight)}"


def _number(value: float) -> str:
    """The shortest text that reads back as the same float: 7.5 as 7.5, 7.123456789 in full."""
    short = f"{value:g}"
    return short if float(short) == value else repr(float(value))


def output_paths(out: str | Path, count: int) -> list[Path]:
    """``out`` for one image; ``stem-1.png`` ... for several."""
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise InputError(f"{out.name} does not end in .png", "pass -o NAME.png")
    return [out] if count == 1 else [out.with_name(f"{out.stem}-{i + 1}{out.suffix}") for i in range(count)]


def check_outputs(paths: list[Path], force: bool = False) -> None:
    """Refuse, before any model loads, outputs that cannot be written: a missing or read-only folder, a
    folder in the file's place, or (without ``force``) a file that exists."""
    for path in paths:
        folder = path.parent
        if not folder.is_dir():
            problem = f"{folder} is not a folder" if folder.exists() else f"the folder {folder} does not exist"
            raise InputError(problem, f"create it (mkdir -p {folder}) or choose another -o path")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise InputError(f"the folder {folder} is not writable", "check its permissions, or choose another -o path")
        if path.is_dir():
            raise InputError(f"{path} is a folder", "pass -o NAME.png")
        if path.exists() and not force:
            raise InputError(f"{path} exists", "pass --force to overwrite it, or choose another path")


def save_pngs(images: list[Image.Image], paths: list[Path], fields: list[dict[str, str]]) -> None:
    """Write every PNG atomically with its text metadata (``fields[i]`` for image i), only after all images exist."""
    from PIL.PngImagePlugin import PngInfo

    from ..paths import atomic_write

    for image, path, chunk in zip(images, paths, fields):
        info = PngInfo()
        for key, value in chunk.items():
            info.add_text(key, value)  # tEXt, or iTXt where the text is not Latin-1
        with atomic_write(path) as f:
            image.save(f, format="PNG", pnginfo=info)
