"""A loopback fake of the Hugging Face hub: the repo-info API and the file server, with injectable faults."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

LFS_SUFFIXES = (".safetensors", ".bin", ".pdparams", ".pdiparams", ".npy")


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a file's contents (the hub's `blobId` for files not in LFS)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class FakeRepo:
    """A model repo at one commit; LFS files are the big-weight suffixes, as .gitattributes usually says."""

    repo_id: str
    files: dict[str, bytes]
    token: str | None = None  # gated: file bytes need `Authorization: Bearer <token>`
    commit: str = ""

    def __post_init__(self):
        if not self.commit:
            digest = hashlib.sha1(self.repo_id.encode())
            for path in sorted(self.files):
                digest.update(path.encode() + self.files[path])
            self.commit = digest.hexdigest()

    def is_lfs(self, path: str) -> bool:
        return path.endswith(LFS_SUFFIXES)

    def sibling(self, path: str, blobs: bool) -> dict:
        """One entry of `siblings` as /api/models returns it (sizes and LFS only with ?blobs=true)."""
        if not blobs:
            return {"rfilename": path}
        data = self.files[path]
        entry = {"rfilename": path, "size": len(data), "blobId": git_blob_sha1(data)}
        if self.is_lfs(path):
            entry["lfs"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "pointerSize": 134}
            entry["blobId"] = hashlib.sha1(path.encode()).hexdigest()  # the pointer file's id
        return entry


@dataclass
class Seen:
    """One request the server answered."""

    method: str
    path: str
    headers: dict[str, str]


@dataclass
class HubServer:
    """The server's state: repos, faults to inject, and a log of requests."""

    repos: dict[str, FakeRepo] = field(default_factory=dict)
    cut_after: dict[str, int] = field(default_factory=dict)  # file path -> bytes sent before dropping, once
    corrupt: dict[str, int] = field(default_factory=dict)  # file path -> how many more responses to corrupt
    requests: list[Seen] = field(default_factory=list)
    transfers: list[tuple[str, str | None]] = field(default_factory=list)  # (file path, Range header)
    url: str = ""

    def add_repo(self, repo_id: str, files: dict[str, bytes], token: str | None = None) -> FakeRepo:
        repo = FakeRepo(repo_id, files, token)
        self.repos[repo_id] = repo
        return repo

    def served(self, path: str) -> list[str | None]:
        """The Range header (None without one) of each response that carried bytes of ``path``."""
        return [rng for p, rng in self.transfers if p == path]

    def start(self) -> "HubServer":
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.hub = self
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.02,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()


API = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<rev>[^/]+))?$")
RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
CDN = re.compile(r"^/cdn/(?P<repo>[^/]+/[^/]+)/(?P<path>.+)$")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_HEAD(self) -> None:
        self._route(body=False)

    def do_GET(self) -> None:
        self._route(body=True)

    @property
    def hub(self) -> HubServer:
        return self.server.hub

    def _route(self, body: bool) -> None:
        split = urlsplit(self.path)
        path = unquote(split.path)
        self.hub.requests.append(Seen(self.command, path, {k.lower(): v for k, v in self.headers.items()}))
        for pattern, handler in ((API, self._api), (RESOLVE, self._resolve), (CDN, self._cdn)):
            m = pattern.match(path)
            if m:
                return handler(m, parse_qs(split.query), body)
        self._error(404, "EntryNotFound", "not found", body)

    def _repo(self, m, body: bool) -> FakeRepo | None:
        repo = self.hub.repos.get(m["repo"])
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found", body)
        elif m.groupdict().get("rev") not in (None, "main", repo.commit):
            self._error(404, "RevisionNotFound", "Invalid rev id", body)
            return None
        return repo

    def _api(self, m, query: dict, body: bool) -> None:
        repo = self._repo(m, body)
        if repo is None:
            return
        blobs = query.get("blobs", ["false"])[0].lower() == "true"
        info = {"_id": repo.commit[:24], "id": repo.repo_id, "modelId": repo.repo_id, "sha": repo.commit,
                "private": False, "gated": "manual" if repo.token else False, "tags": [],
                "siblings": [repo.sibling(p, blobs) for p in sorted(repo.files)]}
        self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"}, body)

    def _resolve(self, m, query: dict, body: bool) -> None:
        repo = self._repo(m, body)
        if repo is None or not self._allowed(repo, body):
            return
        path = m["path"]
        if path not in repo.files:
            return self._error(404, "EntryNotFound", "Entry not found", body)
        data = repo.files[path]
        headers = {"X-Repo-Commit": repo.commit, "ETag": f'"{git_blob_sha1(data)}"'}
        if repo.is_lfs(path):
            # The real hub answers LFS files with a redirect to its CDN on another host (here: `localhost`
            # for 127.0.0.1), naming the sha256 in X-Linked-Etag.
            sha = hashlib.sha256(data).hexdigest()
            cdn = self.hub.url.replace("127.0.0.1", "localhost")
            headers.update({"Location": f"{cdn}/cdn/{repo.repo_id}/{path}", "X-Linked-Etag": f'"{sha}"',
                            "X-Linked-Size": str(len(data)), "ETag": f'"{sha}"'})
            return self._send(302, b"", headers, body)
        self._serve_bytes(path, data, headers, body)

    def _cdn(self, m, query: dict, body: bool) -> None:
        repo = self.hub.repos.get(m["repo"])
        if repo is None or m["path"] not in repo.files:
            return self._error(404, "", "NoSuchKey", body)
        self._serve_bytes(m["path"], repo.files[m["path"]], {}, body)

    def _allowed(self, repo: FakeRepo, body: bool) -> bool:
        if repo.token is None or self.headers.get("Authorization") == f"Bearer {repo.token}":
            return True
        status = 403 if self.headers.get("Authorization") else 401
        self._error(status, "GatedRepo", f"Access to model {repo.repo_id} is restricted.", body)
        return False

    def _serve_bytes(self, path: str, data: bytes, headers: dict, body: bool) -> None:
        """The bytes of a file, honouring `Range: bytes=N-[M]`, with the injected faults."""
        start, end = 0, len(data) - 1
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if m:
            start, end = int(m[1]), int(m[2]) if m[2] else len(data) - 1
            if start >= len(data):
                return self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"}, body)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        chunk = data[start:end + 1]
        if body:
            self.hub.transfers.append((path, self.headers.get("Range")))
        if body and self.hub.corrupt.get(path, 0) > 0:
            self.hub.corrupt[path] -= 1
            chunk = bytes(b ^ 0xFF for b in chunk)
        cut = self.hub.cut_after.pop(path, None) if body else None
        self._send(206 if m else 200, chunk, headers, body, cut=cut)

    def _error(self, status: int, code: str, message: str, body: bool) -> None:
        headers = {"Content-Type": "application/json", "X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self._send(status, json.dumps({"error": message}).encode(), headers, body)

    def _send(self, status: int, data: bytes, headers: dict, body: bool, cut: int | None = None) -> None:
        """Send a response; with ``cut``, announce it all but drop the connection after ``cut`` bytes."""
        self.send_response(status)
        for key, value in {**headers, "Content-Length": str(len(data))}.items():
            self.send_header(key, value)
        self.end_headers()
        if body:
            self.wfile.write(data if cut is None else data[:cut])
            self.wfile.flush()
        if cut is not None:
            self.close_connection = True


@pytest.fixture
def hub(monkeypatch):
    """A running fake hub with HF_ENDPOINT pointing at it and no token set."""
    server = HubServer().start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    yield server
    server.stop()
