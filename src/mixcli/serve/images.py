"""POST /v1/images/generations for a diffusion pipeline: OpenAI's fields (prompt, n, size,
response_format b64_json) plus mix's steps, guidance, seed, negative_prompt and scheduler, run one
request at a time; each PNG carries the metadata `mix generate` writes."""

from __future__ import annotations

import asyncio
import base64
import io
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from starlette.requests import Request
from starlette.responses import JSONResponse

from ..errors import MixError
from .engine import QueueFull
from .errors import ApiError, bad_request
from .protocol import _number, _typed

MAX_IMAGES = 4  # per request; each is a full denoising run on this one worker
MAX_STEPS = 150


class ImageWorker:
    """One thread for the pipeline; at most ``max_queue`` requests wait for it."""

    def __init__(self, pipeline, max_queue: int = 16):
        self.pipeline, self.max_queue = pipeline, max_queue
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mix-images")
        self.lock, self.pending, self.closing = threading.Lock(), 0, False

    def stats(self) -> dict:
        return {"running": min(self.pending, 1), "waiting": max(self.pending - 1, 0)}

    def check_room(self) -> None:
        if self.closing:
            raise ApiError(503, "the server is shutting down", "server_error")
        if self.pending - 1 >= self.max_queue:
            raise QueueFull(self.pending - 1)

    async def run(self, request, timeout_s: float):
        with self.lock:
            self.check_room()
            self.pending += 1
        try:
            future = self.executor.submit(self.pipeline.generate, request)
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(504, "the request took longer than the server's --timeout", "timeout_error") from None
        finally:
            with self.lock:
                self.pending -= 1

    def drain(self, seconds: float) -> None:
        self.closing = True

    def close(self, timeout: float = 5.0) -> None:
        self.closing = True
        self.executor.shutdown(wait=False, cancel_futures=True)


async def generations(request: Request):
    from .app import read_json

    state = request.app.state.mix
    body = await read_json(request, state.max_body_bytes)
    state.images.check_room()
    job = read_request(body, state.pipeline)
    result = await state.images.run(job, state.timeout_s)
    data = [{"b64_json": png_base64(image, job, result, state.name, i), "revised_prompt": None}
            for i, image in enumerate(result.images)]  # fmt: skip
    return JSONResponse({"created": int(time.time()), "data": data})


def read_request(body: dict, pipeline):
    """A diffusion.pipeline.Request of the body, or a 400 naming the field."""
    from ..diffusion.pipeline import Request as Generation
    from ..diffusion.schedulers import SCHEDULER_NAMES

    prompt = _typed(body, "prompt", str, None)
    if not prompt or not prompt.strip():
        raise bad_request("prompt must be a non-empty string", "prompt")
    if _typed(body, "response_format", str, "b64_json") != "b64_json":
        raise bad_request("only response_format b64_json is supported (mix serve keeps no image files)", "response_format")
    n = _typed(body, "n", int, 1)
    if not 1 <= n <= MAX_IMAGES:
        raise bad_request(f"n must be 1 to {MAX_IMAGES}", "n")
    steps = _typed(body, "steps", int, 30)
    if not 1 <= steps <= MAX_STEPS:
        raise bad_request(f"steps must be 1 to {MAX_STEPS}", "steps")
    scheduler = _typed(body, "scheduler", str, None)
    if scheduler is not None and scheduler not in SCHEDULER_NAMES:
        raise bad_request(f"unknown scheduler {scheduler!r}; use one of {', '.join(SCHEDULER_NAMES)}", "scheduler")
    guidance = _number(body, "guidance", None)
    seed = _typed(body, "seed", int, None)
    return Generation(
        prompt=prompt, negative_prompt=_typed(body, "negative_prompt", str, None), steps=steps,
        guidance=None if guidance is None else float(guidance), size=read_size(body, pipeline), num_images=n,
        seed=secrets.randbelow(2**32) if seed is None else seed,
        scheduler=scheduler,
    )  # fmt: skip


def read_size(body: dict, pipeline) -> tuple[int, int] | None:
    """"WxH" (OpenAI's "auto" or none: the model's native size), checked against the pipeline."""
    from ..diffusion.pipeline import check_size

    size = _typed(body, "size", str, "auto")
    if size == "auto":
        return None
    try:
        width, height = (int(part) for part in size.lower().split("x"))
        check_size(width, height, pipeline.scale_factor)
    except ValueError:
        raise bad_request(f"size must be WxH, e.g. 512x512 (got {size!r})", "size") from None
    except MixError as e:
        raise bad_request(str(e), "size") from e
    return width, height


def png_base64(image, job, result, model: str, index: int) -> str:
    """The PNG `mix generate` would write for image ``index``, base64-encoded."""
    from PIL.PngImagePlugin import PngInfo

    from ..diffusion.pipeline import metadata

    info = PngInfo()
    for key, value in metadata(job, result, model, index).items():
        info.add_text(key, value)
    out = io.BytesIO()
    image.save(out, format="PNG", pnginfo=info)
    return base64.b64encode(out.getvalue()).decode("ascii")
