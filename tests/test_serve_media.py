"""`mix serve`'s media rules (mixcli.serve.media): data URLs always; local files only inside
--allow-local-media DIR (symlinks followed); http(s) only with --allow-remote-media, never to loopback or
private addresses, each redirect re-checked, with a byte cap; every refusal a 400 naming the flag, and no
file's contents in any message. Remote fetches go to a test server on the loopback range only."""

from __future__ import annotations

import base64
import ipaddress
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from helpers import picture
from serving import data_url

from mixcli.serve.errors import ApiError
from mixcli.serve.media import MediaPolicy, public_address

SECRET = b"TOP-SECRET-CONTENTS"


def png_bytes(width: int = 20, height: int = 10) -> bytes:
    return base64.b64decode(data_url(picture(width, height)).split(",", 1)[1])


@contextmanager
def web(host: str, routes: dict[str, tuple[int, dict, bytes]]):
    """An HTTP server on ``host`` (a loopback address) answering path -> (status, headers, body)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            status, headers, body = routes.get(self.path, (404, {}, b""))
            self.send_response(status)
            for key, value in {"Content-Length": str(len(body)), **headers}.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer((host, 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def refusal(policy: MediaPolicy, url: str) -> str:
    with pytest.raises(ApiError) as info:
        policy.image(url)
    assert info.value.status == 400 and SECRET.decode() not in info.value.message
    return info.value.message


def test_data_urls_are_always_read():
    assert MediaPolicy().image(data_url(picture(20, 10))).size == (20, 10)


def test_local_files_need_allow_local_media(tmp_path):
    (tmp_path / "a.png").write_bytes(png_bytes())
    for url in (str(tmp_path / "a.png"), f"file://{tmp_path}/a.png", "a.png"):
        assert "--allow-local-media" in refusal(MediaPolicy(), url)


def test_local_files_inside_the_folder_only(tmp_path):
    root, outside = tmp_path / "media", tmp_path / "private"
    root.mkdir(), outside.mkdir()
    (root / "a.png").write_bytes(png_bytes())
    (outside / "secret.png").write_bytes(SECRET)
    (root / "link.png").symlink_to(outside / "secret.png")
    policy = MediaPolicy(local_dir=root)
    assert policy.image("a.png").size == policy.image(f"file://{root}/a.png").size == (20, 10)
    for url in ("../private/secret.png", str(outside / "secret.png"), f"file://{outside}/secret.png", "link.png",
                "/etc/passwd"):  # fmt: skip
        assert "outside the folder" in refusal(policy, url)
    assert "not a file" in refusal(policy, "missing.png")


def test_a_local_file_that_is_no_image_is_400_without_its_contents(tmp_path):
    (tmp_path / "notes.png").write_bytes(SECRET)
    assert "not an image" in refusal(MediaPolicy(local_dir=tmp_path), "notes.png")


def test_remote_urls_need_allow_remote_media():
    assert "--allow-remote-media" in refusal(MediaPolicy(), "http://example.com/a.png")
    assert "--allow-remote-media" in refusal(MediaPolicy(), "https://example.com/a.png")


def test_loopback_private_and_link_local_addresses_are_refused():
    for address in ("127.0.0.1", "10.0.0.1", "172.16.0.1", "192.168.1.1", "169.254.169.254", "::1", "fe80::1",
                    "::ffff:127.0.0.1", "0.0.0.0", "224.0.0.1"):  # fmt: skip
        assert not public_address(ipaddress.ip_address(address)), address
    assert public_address(ipaddress.ip_address("93.184.216.34"))
    with web("127.0.0.1", {"/a.png": (200, {}, png_bytes())}) as base:
        assert "public addresses only" in refusal(MediaPolicy(allow_remote=True), base + "/a.png")
    assert "public addresses only" in refusal(MediaPolicy(allow_remote=True), "http://localhost:9/a.png")


def only(host: str):
    """An address rule that admits one loopback address, standing in for "public" in these tests."""
    return lambda address: str(address) == host


def test_remote_fetch_and_every_redirect_rechecked():
    policy = MediaPolicy(allow_remote=True, address_allowed=only("127.0.0.2"))
    with web("127.0.0.1", {"/inner.png": (200, {}, SECRET)}) as inner:
        routes = {"/a.png": (200, {}, png_bytes()), "/hop": (302, {"Location": "/a.png"}, b""),
                  "/out": (302, {"Location": inner + "/inner.png"}, b""), "/gone": (404, {}, b"")}  # fmt: skip
        with web("127.0.0.2", routes) as base:
            assert policy.image(base + "/a.png").size == (20, 10)
            assert policy.image(base + "/hop").size == (20, 10)  # a redirect to an allowed host is followed
            assert "public addresses only" in refusal(policy, base + "/out")  # one to loopback is not
            assert "HTTP 404" in refusal(policy, base + "/gone")


def test_remote_bodies_are_capped():
    policy = MediaPolicy(allow_remote=True, address_allowed=only("127.0.0.2"), max_bytes=1000)
    with web("127.0.0.2", {"/big.png": (200, {}, png_bytes(100, 100))}) as base:
        assert "over" in refusal(policy, base + "/big.png")


def test_the_server_names_the_flag_in_its_400(tmp_path):
    import httpx

    from mixcli.serve.app import ServerState, build_app

    from types import SimpleNamespace

    model = SimpleNamespace(question_with_images=lambda question, n: "<image>" * n + question)
    app = build_app(ServerState("tiny", engine=_Idle(), loaded=SimpleNamespace(model=model)))
    body = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "/etc/passwd"}}]}]}
    transport = httpx.ASGITransport(app=app)

    async def call():
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post("/v1/chat/completions", json=body)

    import asyncio

    response = asyncio.run(call())
    assert response.status_code == 400 and "--allow-local-media" in response.json()["error"]["message"]


class _Idle:
    """An engine with room that never runs: the request is refused before it would reach it."""

    def check_room(self):
        pass

    def stats(self):
        return {"running": 0, "waiting": 0}

