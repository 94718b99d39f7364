"""The images and videos a request names, read under the server's rules: data URLs always; local files
only inside --allow-local-media DIR; http(s) only with --allow-remote-media, to public addresses only
(each redirect re-checked), with timeouts and a byte cap. Refusals name the flag; contents are never shown."""

from __future__ import annotations

import base64
import binascii
import io
import ipaddress
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import unquote, urljoin, urlsplit

from PIL import Image, UnidentifiedImageError

from ..errors import MixError
from .errors import bad_request

MB = 1 << 20
VIDEO_SUFFIXES = {"video/mp4": ".mp4", "video/webm": ".webm", "video/quicktime": ".mov", "video/x-matroska": ".mkv",
                  "image/gif": ".gif", "image/webp": ".webp", "video/x-msvideo": ".avi"}  # fmt: skip


def public_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether a remote fetch may connect there: not loopback, private, link-local, multicast or reserved."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


@dataclass
class MediaPolicy:
    """Where media may come from, and how much of it."""

    local_dir: Path | None = None  # --allow-local-media
    allow_remote: bool = False  # --allow-remote-media
    max_bytes: int = 20 * MB  # one image or video, however it comes
    max_pixels: int = 40_000_000  # one decoded image (width x height)
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 15.0  # the whole transfer, not one read
    max_redirects: int = 3
    address_allowed: Callable[[ipaddress.IPv4Address | ipaddress.IPv6Address], bool] = public_address

    def image(self, url: str) -> Image.Image:
        """The picture at ``url``, upright RGB; a 400 for anything that is not an image or is too large."""
        from ..images import load_image

        data = self.read(url, "image")
        check_pixels(data, self.max_pixels)
        try:
            return load_image(data)
        except MixError as e:
            raise bad_request(f"an image_url is not a readable image ({e.problem.split(': ')[-1]})") from e

    def video_file(self, url: str) -> tuple[Path, bool]:
        """A local file holding the video at ``url``, and whether it is a temporary one to delete."""
        local = self._local_path(url) if _is_local(url) else None
        if local is not None:
            return local, False
        data = self.read(url, "video")
        suffix = VIDEO_SUFFIXES.get(_media_type(url), ".mp4") if url.startswith("data:") else Path(urlsplit(url).path).suffix
        with tempfile.NamedTemporaryFile(suffix=suffix or ".mp4", delete=False) as f:
            f.write(data)
        return Path(f.name), True

    def read(self, url: str, kind: str) -> bytes:
        """The bytes a URL names, under the rules above."""
        if url.startswith("data:"):
            return self._data(url, kind)
        if urlsplit(url).scheme in ("http", "https"):
            return self._remote(url, kind)
        if _is_local(url):
            path = self._local_path(url)
            if path.stat().st_size > self.max_bytes:
                raise bad_request(f"the {kind} file is over {self.max_bytes // MB} MB")
            return path.read_bytes()
        raise bad_request(f"unsupported {kind} URL scheme '{urlsplit(url).scheme}' (use a data: URL)")

    def _data(self, url: str, kind: str) -> bytes:
        header, sep, payload = url.partition(",")
        if not sep or not header.endswith(";base64"):
            raise bad_request(f"a {kind} data URL must be base64: data:<type>;base64,<data>")
        if len(payload) > self.max_bytes * 4 // 3 + 4:
            raise bad_request(f"the {kind} is over {self.max_bytes // MB} MB")
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as e:
            raise bad_request(f"the {kind} data URL is not valid base64") from e

    def _local_path(self, url: str) -> Path:
        if self.local_dir is None:
            raise bad_request("local files are refused (start mix serve with --allow-local-media DIR to allow a folder)")
        root = Path(self.local_dir).resolve()
        name = unquote(urlsplit(url).path) if url.startswith("file://") else url
        path = (root / Path(name).expanduser()).resolve()  # symlinks followed; an absolute name replaces root
        if not path.is_relative_to(root):
            raise bad_request(f"'{name}' is outside the folder --allow-local-media allows")
        if not path.is_file():
            raise bad_request(f"'{name}' is not a file in the --allow-local-media folder")
        return path

    def _remote(self, url: str, kind: str) -> bytes:
        if not self.allow_remote:
            raise bad_request("http(s) media URLs are refused (start mix serve with --allow-remote-media to allow them)")
        deadline = time.monotonic() + self.connect_timeout_s + self.read_timeout_s
        for _ in range(self.max_redirects + 1):
            self._check_host(url)
            location = self._fetch(url, kind, deadline)
            if isinstance(location, bytes):
                return location
            url = location
        raise bad_request(f"the {kind} URL redirects more than {self.max_redirects} times")

    def _check_host(self, url: str) -> None:
        """Refuse hosts that resolve to a non-public address (the SSRF hole of servers that fetch URLs)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise bad_request("a media URL redirected to something that is not http(s)")
        try:
            infos = socket.getaddrinfo(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
        except OSError as e:
            raise bad_request(f"cannot resolve the media host '{parts.hostname}'") from e
        for info in infos:
            if not self.address_allowed(ipaddress.ip_address(info[4][0].split("%")[0])):
                raise bad_request(f"the media host '{parts.hostname}' is a loopback, private or link-local address; "
                                  "--allow-remote-media fetches from public addresses only")  # fmt: skip

    def _fetch(self, url: str, kind: str, deadline: float) -> bytes | str:
        """The body, or the next URL of a redirect."""
        import httpx2 as httpx

        timeout = httpx.Timeout(self.read_timeout_s, connect=self.connect_timeout_s)
        try:
            with httpx.stream("GET", url, timeout=timeout, follow_redirects=False, trust_env=False) as response:
                if response.is_redirect and "location" in response.headers:
                    return urljoin(url, response.headers["location"])
                if response.status_code != 200:
                    raise bad_request(f"fetching the {kind} URL answered HTTP {response.status_code}")
                return self._body(response, kind, deadline)
        except httpx.HTTPError as e:
            raise bad_request(f"fetching the {kind} URL failed ({type(e).__name__})") from e

    def _body(self, response, kind: str, deadline: float) -> bytes:
        if int(response.headers.get("content-length") or 0) > self.max_bytes:
            raise bad_request(f"the {kind} at that URL is over {self.max_bytes // MB} MB")
        data = bytearray()
        for piece in response.iter_bytes():
            data += piece
            if len(data) > self.max_bytes:
                raise bad_request(f"the {kind} at that URL is over {self.max_bytes // MB} MB")
            if time.monotonic() > deadline:
                raise bad_request(f"fetching the {kind} URL took too long")
        return bytes(data)


def check_pixels(data: bytes, max_pixels: int) -> None:
    """Refuse an image whose header declares more pixels than the cap, before decoding it."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, ValueError) as e:
        raise bad_request("an image_url holds bytes that are not an image (PNG, JPEG, WebP, BMP, TIFF or GIF)") from e
    if width * height > max_pixels:
        raise bad_request(f"an image of {width}x{height} is over the server's {max_pixels:,}-pixel limit")


def _is_local(url: str) -> bool:
    return url.startswith("file://") or "://" not in url and not url.startswith("data:")


def _media_type(url: str) -> str:
    return url[5:].partition(",")[0].split(";")[0].lower()
