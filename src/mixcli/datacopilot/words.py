"""Counts and names in words, shared by the datacopilot commands' lines and the HTML report."""

from __future__ import annotations

# The statistics' keys as a reader would say them (the JSON keeps the keys).
LABELS = {
    "rows": "Rows", "unreadable_rows": "Rows that could not be read",
    "unreadable_lines": "Lines that could not be read",
    "schemas": "Schemas", "roles": "Roles", "turns_per_row": "Turns per row",
    "text_chars": "Characters of text per row", "images_per_row": "Images per row",
    "image_width": "Image width (pixels)", "image_height": "Image height (pixels)",
    "images_unreadable": "Images that could not be read", "image_urls": "Image URLs (not read)",
}


def plural(n: int, noun: str, many: str | None = None) -> str:
    """``n`` and the noun in the right number: "1 row", "2 rows", "1 duplicate"."""
    return f"{n} {noun if n == 1 else many or noun + 's'}"


def label(key: str) -> str:
    """A statistic's name in words."""
    return LABELS.get(key, key.replace("_", " ").capitalize())
