"""OpenAI chat-completion requests read into mix's terms (a system message, (question, answer) turns with
<image> / <video> markers, media URLs, sampling settings), and the response and chunk objects."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, replace

from ..errors import MixError
from ..generation import SamplingConfig
from .errors import bad_request

MAX_STOP_STRINGS = 4  # as OpenAI's API
SYSTEM_ROLES = ("system", "developer")  # newer OpenAI clients send "developer" for system prompts


@dataclass
class ChatRequest:
    """What a /v1/chat/completions body asks for; images in the order of their markers."""

    system: str | None
    turns: list[tuple[str, str | None]]
    images: list[str]
    video: str | None
    sampling: SamplingConfig
    stream: bool = False
    include_usage: bool = False


def parse_chat(body: dict, defaults: SamplingConfig, model) -> ChatRequest:
    """The request, or a 400 ApiError naming the field at fault. ``model`` places images in a question
    as `mix chat` does (its question_with_images)."""
    system, turns, images, videos = read_messages(body.get("messages"), model)
    if len(videos) > 1:
        raise bad_request(f"one video per request, got {len(videos)}", "messages")
    stream = _typed(body, "stream", bool, False)
    options = _typed(body, "stream_options", dict, None) or {}
    include_usage = _typed(options, "include_usage", bool, False, "stream_options.include_usage")
    if _typed(body, "n", int, 1) != 1:
        raise bad_request("only n=1 is supported: ask once per completion", "n")
    if body.get("tools"):
        raise bad_request("tools are not supported by mix serve", "tools")
    sampling = read_sampling(body, defaults)
    return ChatRequest(system, turns, images, videos[0] if videos else None, sampling, stream, include_usage)


def read_sampling(body: dict, defaults: SamplingConfig) -> SamplingConfig:
    """OpenAI's sampling fields (plus top_k and repetition_penalty, as vLLM takes them) over the
    server's defaults, checked as every front end checks them."""
    limit = _typed(body, "max_completion_tokens", int, None)
    limit = _typed(body, "max_tokens", int, defaults.max_new_tokens) if limit is None else limit
    cfg = replace(
        defaults,
        max_new_tokens=limit,
        temperature=float(_number(body, "temperature", defaults.temperature)),
        top_p=float(_number(body, "top_p", defaults.top_p)),
        top_k=_typed(body, "top_k", int, defaults.top_k),
        repetition_penalty=float(_number(body, "repetition_penalty", defaults.repetition_penalty)),
        seed=_typed(body, "seed", int, defaults.seed),
        stop_strings=tuple(read_stop(body.get("stop"))) or tuple(defaults.stop_strings),
    )
    try:
        cfg.validate()
    except MixError as e:  # its flag names (--top-p) are the CLI's; the field is what the client sent
        raise bad_request(e.problem.replace("--max-new-tokens", "max_tokens").replace("--", "").replace("-", "_")) from e
    return cfg


def read_stop(value) -> list[str]:
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise bad_request("stop must be a string or a list of strings", "stop")
    if len(stops) > MAX_STOP_STRINGS:
        raise bad_request(f"at most {MAX_STOP_STRINGS} stop strings", "stop")
    return [s for s in stops if s]


# --------------------------------------------------------------------------- messages


def read_messages(messages, model) -> tuple[str | None, list[tuple[str, str | None]], list[str], list[str]]:
    """(system message, turns, image URLs, video URLs) of the messages list. Consecutive user messages
    join into one question; the last message must be the user's."""
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages must be a non-empty list", "messages")
    systems, turns, images, videos = [], [], [], []
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        where = f"messages[{i}]"
        if role in SYSTEM_ROLES:
            if turns:
                raise bad_request("system messages must come before the conversation", where)
            systems.append(plain_text(message.get("content"), where))
        elif role == "user":
            question, more_images, more_videos = user_question(message.get("content"), model, where)
            images += more_images
            videos += more_videos
            if turns and turns[-1][1] is None:  # two user messages in a row
                turns[-1] = (turns[-1][0] + "\n" + question, None)
            else:
                turns.append((question, None))
        elif role == "assistant":
            if not turns or turns[-1][1] is not None:
                raise bad_request("an assistant message must follow a user message", where)
            turns[-1] = (turns[-1][0], plain_text(message.get("content"), where) or "")
        else:
            raise bad_request(f"{where}.role must be system, user or assistant (got {role!r})", where + ".role")
    if not turns or turns[-1][1] is not None:
        raise bad_request("the last message must be the user's", "messages")
    return ("\n".join(systems) if systems else None), turns, images, videos


def plain_text(content, where: str) -> str:
    """A system or assistant message's text: a string or text parts (None: empty)."""
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "".join(_text_of(p, f"{where}.content") for p in content)
    raise bad_request(f"{where}.content must be a string or a list of text parts", f"{where}.content")


def user_question(content, model, where: str) -> tuple[str, list[str], list[str]]:
    """A user message as a question with <image> / <video> markers where its media stand, and their URLs.
    Images that all come before the text are placed the family's way, as `mix infer` and `mix chat` do."""
    if isinstance(content, str):
        return content, [], []
    if not isinstance(content, list) or not content:
        raise bad_request(f"{where}.content must be a string or a non-empty list of parts", f"{where}.content")
    parts = [_part(p, f"{where}.content[{j}]") for j, p in enumerate(content)]
    images = [value for kind, value in parts if kind == "image"]
    videos = [value for kind, value in parts if kind == "video"]
    kinds = [kind for kind, _ in parts]
    text = "".join(value for kind, value in parts if kind == "text")
    if images and not videos and kinds == sorted(kinds, key=lambda k: k != "image"):  # every image first
        return model.question_with_images(text, len(images)), images, videos
    markers = {"image": "<image>", "video": "<video>"}
    return "".join(markers.get(kind, value) for kind, value in parts), images, videos


def _part(part, where: str) -> tuple[str, str]:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "text":
        return "text", _text_of(part, where)
    if kind in ("image_url", "video_url"):
        return kind.split("_")[0], _url_of(part, kind, where)
    raise bad_request(f"{where}.type must be text, image_url or video_url (got {kind!r})", f"{where}.type")


def _text_of(part: dict, where: str) -> str:
    if not isinstance(part.get("text"), str):
        raise bad_request(f"{where}.text must be a string", f"{where}.text")
    return part["text"]


def _url_of(part: dict, kind: str, where: str) -> str:
    value = part.get(kind)
    url = value.get("url") if isinstance(value, dict) else value
    if not isinstance(url, str) or not url:
        raise bad_request(f"{where}.{kind}.url must be a string", f"{where}.{kind}.url")
    return url


def _typed(body: dict, name: str, kind: type, default, param: str | None = None):
    """body[name] if it has type ``kind`` (a bool is no int), default when absent or null."""
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise bad_request(f"{param or name} must be {_KIND_NAMES[kind]}", param or name)
    return value


def _number(body: dict, name: str, default):
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad_request(f"{name} must be a number", name)
    return value


_KIND_NAMES = {bool: "true or false", int: "an integer", dict: "an object", str: "a string", list: "a list"}


# --------------------------------------------------------------------------- responses


def completion_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex[:24]


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}  # fmt: skip


def completion(cid: str, model: str, text: str, finish_reason: str, counts: dict) -> dict:
    """A whole chat.completion object."""
    return {
        "id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                     "finish_reason": finish_reason}],
        "usage": counts,
    }  # fmt: skip


def chunk(cid: str, model: str, delta: dict | None, finish_reason: str | None = None, counts: dict | None = None,
          with_usage: bool = False) -> dict:  # fmt: skip
    """One chat.completion.chunk; delta None makes the usage-only chunk (no choices)."""
    choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
    out = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model, "choices": choices}
    if with_usage:
        out["usage"] = counts
    return out
