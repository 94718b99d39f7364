"""Row schemas (PaddleMIX MM and MIX, LLaVA, OpenAI messages): detection, defects named, lossless conversion.

What each name reads and writes (README.md shows a row of each):

- ``llava``: LLaVA's training data (``LazySupervisedDataset`` in haotian-liu/LLaVA; LLaVA-NeXT for several
  images): ``image`` a path, or a list of paths; ShareGPT turns ``{"from": "human"|"gpt"|"system", "value"}``
  with ``<image>`` markers. ShareGPT files that list images under ``images`` (LLaMA-Factory) read as llava.
- ``mm``: PaddleMIX DataCopilot's ``SCHEMA.MM``, which is LLaVA's layout, so it is written the same way
  and a row of it is detected as ``llava``.
- ``mix``: PaddleMIX DataCopilot's ``SCHEMA.MIX``: ``images`` a list of ``{"id": N, "url": path}`` (null for
  text only), turns ``{"from": "user"|"assistant", "value"}`` with ``<image>N</image>`` markers.
- ``openai``: chat-completions ``messages``, content as ``text`` and ``image_url`` parts.

Every schema converts through one canonical row::

    {"id": ..., "images": [str, ...], "turns": [{"role": "user"|"assistant"|"system", "text": str}, ...],
     "extra": {other top-level keys}}

where each image sits in the text as an ``<image>`` marker, the way LLaVA writes it.
"""

from __future__ import annotations

import re
from typing import Any, Callable

from ..errors import InputError

IMAGE_TOKEN = "<image>"
SCHEMAS = ("mm", "mix", "llava", "openai")

_SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system"}
_SHAREGPT_NAMES = {v: k for k, v in _SHAREGPT_ROLES.items()}
_CHAT_ROLES = ("user", "assistant", "system")
_ROW_KEYS = {"id", "image", "images", "conversations", "messages"}
_MIX_MARKER = re.compile(r"<image>(\d+)</image>")
_FIX = "see `mix datacopilot validate` and the schemas in the README"


class SchemaError(InputError):
    """A row that fits none of the known schemas, or a field of the wrong type."""

    def __init__(self, problem: str, fix: str | None = _FIX):
        super().__init__(problem, fix)


def kind_of(value: Any) -> str:
    """A JSON value's type in words, for messages: "an int", "a list", "null", "text"."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    names = {int: "an int", float: "a float", str: "text", list: "a list", dict: "an object"}
    return names.get(type(value), type(value).__name__)


def detect(row: Any) -> str | None:
    """The schema name of one row, or None when it matches none (``diagnose`` says why)."""
    if not isinstance(row, dict):
        return None
    if isinstance(row.get("messages"), list):
        return "openai"
    turns = row.get("conversations")
    if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
        return None
    roles = {r if isinstance(r, str) else None for r in map(_role, turns)}
    if roles <= set(_SHAREGPT_ROLES):
        return "llava"
    if roles <= set(_CHAT_ROLES):
        return "mix"
    return None


def diagnose(row: Any) -> str:
    """Why a row fits no schema, naming the field at fault."""
    if not isinstance(row, dict):
        return "row is not an object"
    key = "messages" if "messages" in row else "conversations"
    if key not in row:
        return "unknown schema: expected `conversations` (mm, mix, llava) or `messages` (openai)"
    turns = row[key]
    if not isinstance(turns, list):
        return f"{key} is {kind_of(turns)}, expected a list of turns"
    for i, t in enumerate(turns, 1):
        problem = _turn_problem(t, i, chat_only=key == "messages")
        if problem:
            return problem
    return "turns mix ShareGPT roles (human/gpt) with chat roles (user/assistant)"


def _turn_problem(turn: Any, i: int, chat_only: bool = False) -> str | None:
    """What is wrong with one turn's shape or role, if anything (OpenAI messages take chat roles only)."""
    if not isinstance(turn, dict):
        return f"turn {i} is {kind_of(turn)}, expected an object"
    role = _role(turn)
    if role is None:
        return f"turn {i} has no role (`from` or `role`)"
    if not isinstance(role, str):
        return f"turn {i}: role is {kind_of(role)}, expected text"
    if chat_only and role not in _CHAT_ROLES:
        return f"turn {i}: unknown role {role!r} (expected user/assistant/system)"
    if role not in _SHAREGPT_ROLES and role not in _CHAT_ROLES:
        return f"turn {i}: unknown role {role!r} (expected human/gpt/system or user/assistant/system)"
    return None


def _role(turn: dict) -> Any:
    return turn.get("from", turn.get("role"))


def to_canonical(row: Any, schema: str | None = None) -> dict:
    """The canonical form of a row; raises SchemaError naming the defect when the row fits no schema."""
    schema = schema or detect(row)
    if schema == "openai":
        return _from_openai(row)
    if schema in ("mm", "llava", "mix"):
        return _from_conversations(row, schema)
    raise SchemaError(diagnose(row))


def from_canonical(canon: dict, schema: str) -> dict:
    """A canonical row written in ``schema``."""
    if schema == "openai":
        return _to_openai(canon)
    if schema == "mix":
        return _to_mix(canon)
    if schema in ("mm", "llava"):
        return _to_sharegpt(canon)
    raise SchemaError(f"unknown target schema {schema!r}", f"choose one of {', '.join(SCHEMAS)}")


def convert(row: Any, to: str) -> dict:
    """One row converted to schema ``to``."""
    return from_canonical(to_canonical(row), to)


def _extra(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in _ROW_KEYS}


def _header(canon: dict) -> dict:
    return {} if canon.get("id") is None else {"id": canon["id"]}


# ---- conversations: mm, llava, mix ------------------------------------------------------------------


def _from_conversations(row: dict, schema: str) -> dict:
    turns = [_from_turn(t, i) for i, t in enumerate(row["conversations"], 1)]
    images, meta = _image_refs(row)
    if schema == "mix":
        images, meta = _in_marker_order(images, meta, turns)
        for t in turns:
            t["text"] = _MIX_MARKER.sub(IMAGE_TOKEN, t["text"])
    canon = {"id": row.get("id"), "images": images, "turns": turns, "extra": _extra(row)}
    if isinstance(row.get("image"), list):
        canon["image_list"] = True  # so a one-image list stays a list through mm/llava
    if any(meta):
        canon["image_meta"] = meta
    return canon


def _from_turn(turn: dict, i: int) -> dict:
    problem = _turn_problem(turn, i)
    if problem:
        raise SchemaError(problem)
    key = "value" if "value" in turn else "content"
    text = turn.get(key, "")
    if not isinstance(text, str):
        raise SchemaError(f"turn {i}: {key} is {kind_of(text)}, expected text")
    role = _role(turn)
    rest = {k: v for k, v in turn.items() if k not in ("from", "role", "value", "content")}
    return {"role": _SHAREGPT_ROLES.get(role, role), "text": text, **({"extra": rest} if rest else {})}


def _image_refs(row: dict) -> tuple[list, list[dict]]:
    """Image paths of a conversations row, and the other fields of MIX's image objects (width, ...)."""
    key = "images" if "images" in row else "image"
    value = row.get(key)
    if value is None:
        return [], []
    if isinstance(value, str):
        return [value], [{}]
    if not isinstance(value, list):
        raise SchemaError(f"{key} must be a path string or a list, not {kind_of(value)}")
    refs, meta = [], []
    for i, item in enumerate(value, 1):
        if isinstance(item, dict) and isinstance(item.get("url"), str):
            refs.append(item["url"])
            meta.append({k: v for k, v in item.items() if k != "url"})
        elif isinstance(item, str):
            refs.append(item)
            meta.append({})
        else:
            raise SchemaError(f"{key} {i} is {kind_of(item)}, expected a path string")
    return refs, meta


def _in_marker_order(images: list, meta: list[dict], turns: list[dict]) -> tuple[list, list[dict]]:
    """MIX images in the order their ``<image>N</image>`` markers name them (when they name each once)."""
    named = [int(n) for t in turns for n in _MIX_MARKER.findall(t["text"])]
    ids = [m.get("id") for m in meta]
    if not all(isinstance(i, int) for i in ids) or len(set(ids)) != len(ids) or sorted(named) != sorted(ids):
        return images, meta
    order = [ids.index(n) for n in named]
    return [images[i] for i in order], [meta[i] for i in order]


def _to_sharegpt(canon: dict) -> dict:
    """LLaVA's layout (PaddleMIX MM's too): ``image`` a path, or a list for several."""
    out = _header(canon)
    images = canon["images"]
    if images:
        out["image"] = images[0] if len(images) == 1 and not canon.get("image_list") else list(images)
    out["conversations"] = [{"from": _SHAREGPT_NAMES.get(t["role"], t["role"]), "value": t["text"],
                             **t.get("extra", {})} for t in canon["turns"]]
    out.update(canon["extra"])
    return out


def _to_mix(canon: dict) -> dict:
    """PaddleMIX MIX: ``images`` as ``{"id", "url"}`` objects (null without images), numbered markers."""
    out = _header(canon)
    meta = canon.get("image_meta") or [{}] * len(canon["images"])
    objects = [{"id": m.get("id", i), "url": ref, **{k: v for k, v in m.items() if k != "id"}}
               for i, (ref, m) in enumerate(zip(canon["images"], meta))]
    ids = iter([o["id"] for o in objects])  # markers number the images in text order ...
    if all(isinstance(o["id"], int) for o in objects):
        objects.sort(key=lambda o: o["id"])  # ... the list keeps them by id, as PaddleMIX writes it
    out["images"] = objects or None
    out["conversations"] = [{"from": t["role"], "value": _numbered(t["text"], ids), **t.get("extra", {})}
                            for t in canon["turns"]]
    out.update(canon["extra"])
    return out


def _numbered(text: str, ids) -> str:
    """Each ``<image>`` as ``<image>N</image>`` of the next image; markers beyond the images stay plain."""
    def number(_match) -> str:
        n = next(ids, None)
        return IMAGE_TOKEN if n is None else f"<image>{n}</image>"

    return re.sub(re.escape(IMAGE_TOKEN), number, text)


# ---- openai messages ----------------------------------------------------------------------------------


def _from_openai(row: dict) -> dict:
    images: list = []
    turns = []
    for i, m in enumerate(row["messages"], 1):
        problem = _turn_problem(m, i, chat_only=True)
        if problem:
            raise SchemaError(problem)
        text = _content_text(m.get("content", ""), images, i)
        rest = {k: v for k, v in m.items() if k not in ("role", "content")}
        turns.append({"role": m["role"], "text": text, **({"extra": rest} if rest else {})})
    return {"id": row.get("id"), "images": images, "turns": turns, "extra": _extra(row)}


def _content_text(content: Any, images: list, i: int) -> str:
    """A message's text with ``<image>`` markers where its image parts were (images collected)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise SchemaError(f"turn {i}: content is {kind_of(content)}, expected text or a list of parts")
    pieces: list[str] = []
    after_image = False
    for part in content:
        if not isinstance(part, dict):
            raise SchemaError(f"turn {i}: a content part is {kind_of(part)}, expected an object")
        # LLaVA writes a newline after each <image> that something follows; the parts leave it out.
        newline = "\n" if after_image else ""
        after_image = part.get("type") in ("image_url", "image")
        if after_image:
            images.append(_part_url(part, i))
            pieces.append(newline + IMAGE_TOKEN)
            continue
        text = part.get("text", "")
        if not isinstance(text, str):
            raise SchemaError(f"turn {i}: text is {kind_of(text)}, expected text")
        pieces.append(newline + text)
    return "".join(pieces)


def _part_url(part: dict, i: int) -> str:
    value = part.get("image_url", part.get("image"))
    url = value.get("url") if isinstance(value, dict) else value
    if not isinstance(url, str):
        raise SchemaError(f"turn {i}: image_url must be a URL or path string, or {{\"url\": ...}}")
    return url


def _to_openai(canon: dict) -> dict:
    pending = list(canon["images"])
    messages = []
    for i, t in enumerate(canon["turns"]):
        text = t["text"]
        # Images that no marker places go in front of the first turn, where LLaVA's loader puts them.
        missing = len(pending) - sum(x["text"].count(IMAGE_TOKEN) for x in canon["turns"][i:])
        if missing > 0:
            text = IMAGE_TOKEN * missing + "\n" + text
        messages.append({"role": t["role"], "content": _openai_content(text, pending), **t.get("extra", {})})
    out = _header(canon)
    out["messages"] = messages
    out.update(canon["extra"])
    return out


def _openai_content(text: str, pending: list) -> list[dict]:
    """Text and image parts; markers beyond the images left stay in the text, so nothing is invented."""
    # Always a list of parts (never a bare string), so every row has the same shape, which Parquet needs.
    parts: list[dict] = []
    for i, piece in enumerate(text.split(IMAGE_TOKEN, len(pending))):
        if i > 0:
            parts.append({"type": "image_url", "image_url": {"url": pending.pop(0)}})
            # The newline LLaVA puts after "<image>" separates it from what follows; parts need none.
            piece = piece.removeprefix("\n")
        if piece:
            parts.append({"type": "text", "text": piece})
    return parts or [{"type": "text", "text": text}]


# ---- image references in any schema -----------------------------------------------------------------


def map_images(row: Any, fn: Callable[[str], str]) -> Any:
    """``row`` with every image path string passed through ``fn``, in the row's own layout.

    Rows of no schema are handled by the same keys (``image``, ``images``, ``messages``); values of other
    types stay as they are, for ``validate`` to report.
    """
    if not isinstance(row, dict):
        return row
    out = dict(row)
    for key in ("image", "images"):
        if key in row:
            out[key] = _map_ref(row[key], fn)
    if isinstance(row.get("messages"), list):
        out["messages"] = [_map_message(m, fn) for m in row["messages"]]
    return out


def _map_ref(value: Any, fn: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, list):
        return [_map_ref(v, fn) for v in value]
    if isinstance(value, dict) and isinstance(value.get("url"), str):
        return {**value, "url": fn(value["url"])}
    return value


def _map_message(message: Any, fn: Callable[[str], str]) -> Any:
    if not isinstance(message, dict) or not isinstance(message.get("content"), list):
        return message
    parts = []
    for part in message["content"]:
        if isinstance(part, dict) and part.get("type") in ("image_url", "image"):
            key = "image_url" if "image_url" in part else "image"
            part = {**part, key: _map_ref(part[key], fn)} if key in part else part
        parts.append(part)
    return {**message, "content": parts}
