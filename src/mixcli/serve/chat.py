"""POST /v1/chat/completions: the request read (protocol.py), its media fetched (media.py), the prompt
built by vlm.prepare_request exactly as `mix infer` builds it, decoded by the engine, answered whole or
streamed as server-sent events in OpenAI's chunk format."""

from __future__ import annotations

import asyncio
import json
import time

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse

from ..errors import MixError
from .engine import Job
from .errors import ApiError, bad_request
from .protocol import ChatRequest, chunk, completion, completion_id, parse_chat, usage

POLL_S = 0.25  # how often a waiting handler checks whether its client has gone


class ClientGone(Exception):
    pass


async def completions(request: Request):
    from .app import read_json

    state = request.app.state.mix
    body = await read_json(request, state.max_body_bytes)
    state.engine.check_room()
    chat = parse_chat(body, state.defaults, state.loaded.model)
    prompt, cfg = await run_in_threadpool(prepare, state, chat)
    queue, loop = asyncio.Queue(), asyncio.get_running_loop()
    job = Job(prompt, cfg, lambda item: _put(loop, queue, item), time.monotonic() + state.timeout_s)
    counts = usage(len(prompt.ids), 0)  # prompt_tokens counts the image tokens: they are in the ids
    request.scope.setdefault("state", {})["usage"] = counts  # for the request's log line
    state.engine.submit(job)
    if chat.stream:
        events = stream_events(request, job, queue, state.name, chat.include_usage, counts)
        return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    text, reason = await collect(request, job, queue, counts)
    return JSONResponse(completion(completion_id(), state.name, text, reason, counts))


def prepare(state, chat: ChatRequest):
    """(prompt, sampling) of a request: its images and video read under the media rules, then the
    prompt as `mix infer` / `mix chat` build it."""
    from ..vlm import prepare_request

    loaded = state.loaded
    images = [state.media.image(url) for url in chat.images]
    clip = read_video(state, chat.video) if chat.video is not None else None
    try:
        return prepare_request(loaded, chat.turns, images, chat.sampling, clip, chat.system)
    except MixError as e:
        raise bad_request(str(e)) from e


def read_video(state, url: str):
    """The request's video sampled the family's way (as `mix infer VIDEO` samples it by default)."""
    from ..vlm import read_clip

    model = state.loaded.model
    if getattr(model, "video_sampling", None) is None:
        raise bad_request(f"{model.family} models take no video (send frames as images)")
    path, temporary = state.media.video_file(url)
    try:
        return read_clip(state.loaded, str(path))
    except MixError as e:
        raise bad_request(f"the video_url is not a readable video ({e.problem})") from e
    finally:
        if temporary:
            path.unlink(missing_ok=True)


def _put(loop, queue: asyncio.Queue, item) -> None:
    """From the worker thread: hand an item to the request's event loop (gone once the server stops)."""
    try:
        loop.call_soon_threadsafe(queue.put_nowait, item)
    except RuntimeError:
        pass


async def next_item(request: Request, job: Job, queue: asyncio.Queue):
    """The next Step, None at the end, or an ApiError; ClientGone (and the job cancelled) when the
    client has disconnected, checked every POLL_S however fast the tokens come."""
    while True:
        now = time.monotonic()
        if now - job.checked_at > POLL_S:
            job.checked_at = now
            if await request.is_disconnected():
                job.cancelled.set()
                raise ClientGone
        try:
            return await asyncio.wait_for(queue.get(), POLL_S)
        except asyncio.TimeoutError:
            pass


def stopped_error(job: Job) -> ApiError:
    """Why a generation ended early when the client did not ask it to."""
    if job.timed_out:
        return ApiError(504, "the request took longer than the server's --timeout", "timeout_error")
    return ApiError(503, "the server is shutting down", "server_error")


async def collect(request: Request, job: Job, queue: asyncio.Queue, counts: dict) -> tuple[str, str]:
    """The whole text and finish reason of a non-streaming request."""
    pieces, reason = [], "length"
    try:
        while (item := await next_item(request, job, queue)) is not None:
            if isinstance(item, ApiError):
                raise item
            _count(counts, item)
            if item.finish_reason == "cancelled":
                raise stopped_error(job)
            pieces.append(item.text)
            reason = item.finish_reason or reason
    finally:
        job.cancelled.set()  # a no-op once finished; stops decoding on any early exit
    return "".join(pieces), reason


async def stream_events(request: Request, job: Job, queue: asyncio.Queue, name: str, with_usage: bool, counts: dict):
    """Server-sent events: a role chunk, content chunks, a finish chunk, the usage chunk when asked,
    then [DONE]. An error after the stream began is sent as an {"error": ...} event."""
    cid = completion_id()
    try:
        yield sse(chunk(cid, name, {"role": "assistant", "content": ""}, with_usage=with_usage))
        while (item := await next_item(request, job, queue)) is not None:
            if isinstance(item, ApiError) or item.finish_reason == "cancelled":
                yield sse((item if isinstance(item, ApiError) else stopped_error(job)).body())
                break
            _count(counts, item)
            if item.text:
                yield sse(chunk(cid, name, {"content": item.text}, with_usage=with_usage))
            if item.finish_reason:
                yield sse(chunk(cid, name, {}, item.finish_reason, with_usage=with_usage))
        if with_usage:
            yield sse(chunk(cid, name, None, counts=dict(counts), with_usage=True))
        yield "data: [DONE]\n\n"
    except ClientGone:
        pass
    finally:
        job.cancelled.set()


def _count(counts: dict, step) -> None:
    if step.token is not None:
        counts["completion_tokens"] += 1
        counts["total_tokens"] += 1


def sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"
