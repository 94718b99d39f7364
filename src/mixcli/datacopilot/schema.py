"""Row schemas (PaddleMIX MM and MIX, LLaVA/ShareGPT, OpenAI messages): detection and lossless conversion.

Every schema converts through one canonical row::

    {"id": ..., "images": [str, ...], "turns": [{"role": "user"|"assistant"|"system", "text": str}, ...],
     "extra": {other top-level keys}}

where each image sits in the text as an ``<image>`` marker, the way LLaVA and PaddleMIX write it.
"""

from __future__ import annotations

from typing import Any

from ..errors import InputError

IMAGE_TOKEN = "<image>"
SCHEMAS = ("mm", "mix", "llava", "openai")

# mm and llava share ShareGPT's human/gpt turns; mm keeps PaddleMIX's singular `image` key, llava `images`.
_SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system"}
_SHAREGPT_NAMES = {v: k for k, v in _SHAREGPT_ROLES.items()}
_CHAT_ROLES = {"user", "assistant", "system"}
_ROW_KEYS = {"id", "image", "images", "conversations", "messages"}


class SchemaError(InputError):
    """A row that matches none of the known schemas."""


def detect(row: Any) -> str | None:
    """The schema name of one row, or None when it matches none."""
    if not isinstance(row, dict):
        return None
    if isinstance(row.get("messages"), list):
        return "openai"
    turns = row.get("conversations")
    if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
        return None
    roles = {r if isinstance(r, str) else None for r in map(_turn_role_name, turns)}
    if roles <= set(_SHAREGPT_ROLES):
        return "llava" if "images" in row and "image" not in row else "mm"
    if roles <= _CHAT_ROLES:
        return "mix"
    return None


def _turn_role_name(turn: dict) -> Any:
    return turn.get("from", turn.get("role"))


def to_canonical(row: Any, schema: str | None = None) -> dict:
    """The canonical form of a row; raises SchemaError when the row fits no schema."""
    schema = schema or detect(row)
    if schema == "openai":
        return _from_openai(row)
    if schema in ("mm", "llava", "mix"):
        return _from_conversations(row)
    raise SchemaError("unknown schema: expected `conversations` (mm, mix, llava) or `messages` (openai)",
                      "convert the rows to one of mm, mix, llava, openai")


def from_canonical(canon: dict, schema: str) -> dict:
    """A canonical row written in ``schema``."""
    if schema == "openai":
        return _to_openai(canon)
    if schema in ("mm", "llava", "mix"):
        return _to_conversations(canon, schema)
    raise SchemaError(f"unknown target schema {schema!r}", f"choose one of {', '.join(SCHEMAS)}")


def convert(row: Any, to: str) -> dict:
    """One row converted to schema ``to``."""
    return from_canonical(to_canonical(row), to)


def _extra(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in _ROW_KEYS}


def _images_of(row: dict) -> list:
    image = row.get("images", row.get("image"))
    if image is None:
        return []
    return list(image) if isinstance(image, list) else [image]


def _from_conversations(row: dict) -> dict:
    turns = []
    for t in row["conversations"]:
        role = _turn_role_name(t)
        text = t.get("value", t.get("content", ""))
        rest = {k: v for k, v in t.items() if k not in ("from", "role", "value", "content")}
        turns.append({"role": _SHAREGPT_ROLES.get(role, role), "text": text, **({"extra": rest} if rest else {})})
    return {"id": row.get("id"), "images": _images_of(row), "turns": turns, "extra": _extra(row),
            "image_list": isinstance(row.get("image"), list)}


def _to_conversations(canon: dict, schema: str) -> dict:
    out: dict = {} if canon.get("id") is None else {"id": canon["id"]}
    images = canon["images"]
    if schema == "mm" and images:
        out["image"] = images[0] if len(images) == 1 and not canon.get("image_list") else images
    elif images:
        out["images"] = images
    role_name = (lambda r: _SHAREGPT_NAMES.get(r, r)) if schema != "mix" else (lambda r: r)
    out["conversations"] = [{"from": role_name(t["role"]), "value": t["text"], **t.get("extra", {})}
                            for t in canon["turns"]]
    out.update(canon["extra"])
    return out


def _from_openai(row: dict) -> dict:
    images: list = []
    turns = []
    for m in row["messages"]:
        content = m.get("content", "")
        if isinstance(content, list):
            pieces = []
            for part in content:
                if part.get("type") in ("image_url", "image"):
                    images.append(_part_url(part))
                    pieces.append(IMAGE_TOKEN)
                else:
                    pieces.append(part.get("text", ""))
            content = "".join(pieces)
        rest = {k: v for k, v in m.items() if k not in ("role", "content")}
        turns.append({"role": m.get("role"), "text": content, **({"extra": rest} if rest else {})})
    return {"id": row.get("id"), "images": images, "turns": turns, "extra": _extra(row)}


def _part_url(part: dict) -> str:
    value = part.get("image_url", part.get("image"))
    return value.get("url", "") if isinstance(value, dict) else value


def _to_openai(canon: dict) -> dict:
    pending = list(canon["images"])
    messages = []
    for i, t in enumerate(canon["turns"]):
        text = t["text"]
        # Images that no marker places go in front of the first turn, where LLaVA's loader puts them.
        missing = len(pending) - sum(x["text"].count(IMAGE_TOKEN) for x in canon["turns"][i:])
        if missing > 0:
            text = IMAGE_TOKEN * missing + text
        messages.append({"role": t["role"], "content": _openai_content(text, pending), **t.get("extra", {})})
    out: dict = {} if canon.get("id") is None else {"id": canon["id"]}
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
        if piece:
            parts.append({"type": "text", "text": piece})
    return parts or [{"type": "text", "text": text}]
