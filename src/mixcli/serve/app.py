"""The ASGI application: routes, the API key, the body limit, OpenAI-style errors and one log line per
request on stderr. What a route does lives in chat.py (vision-language models) and images.py (diffusion)."""

from __future__ import annotations

import functools
import hmac
import json
import sys
import time
import traceback
from dataclasses import dataclass, field
from importlib import resources

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from ..errors import MixError
from ..generation import SamplingConfig
from .errors import ApiError, bad_request
from .hosts import HostPolicy, refusal
from .media import MB, MediaPolicy

OPEN_PATHS = ("/health", "/")  # the chat page is static; the API calls it makes carry the key


@dataclass
class ServerState:
    """One model and the server's rules for it."""

    name: str  # the MODEL argument: the id /v1/models lists
    loaded: object = None  # a vlm.LoadedModel
    engine: object = None  # its engine.Engine
    pipeline: object = None  # or a diffusion pipeline
    images: object = None  # and its images.ImageWorker
    defaults: SamplingConfig = field(default_factory=SamplingConfig)
    media: MediaPolicy = field(default_factory=MediaPolicy)
    api_key: str | None = None
    allow_hosts: tuple[str, ...] = ()  # --allow-host: names beyond the bound address (hosts.host_policy)
    max_body_bytes: int = 20 * MB
    timeout_s: float = 600.0
    created: int = field(default_factory=lambda: int(time.time()))


def api(handler):
    """An endpoint whose refusals become OpenAI-style JSON: ApiError as given, MixError 400, anything
    else 500 (traceback on stderr), so one bad request never stops the server."""

    @functools.wraps(handler)
    async def endpoint(request: Request):
        try:
            return await handler(request)
        except ApiError as e:
            return error_response(e)
        except MixError as e:
            return error_response(bad_request(str(e)))
        except Exception as e:  # noqa: BLE001
            traceback.print_exc(file=sys.stderr)
            return error_response(ApiError(500, f"{type(e).__name__}: {e}", "server_error"))

    return endpoint


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), error.status, headers=error.headers)


async def read_json(request: Request, limit: int) -> dict:
    """The body as a JSON object: 413 past ``limit`` bytes (declared or sent), 400 if it is not one."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > limit:
            raise _too_large(limit)
    try:
        data = json.loads(body)
    except ValueError as e:
        raise bad_request(f"the body is not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise bad_request("the body must be a JSON object")
    return data


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"the request body is over {limit / MB:g} MB (the server's --max-body-mb)",
                    "invalid_request_error")  # fmt: skip


@api
async def health(request: Request):
    state: ServerState = request.app.state.mix
    busy = state.engine.stats() if state.engine is not None else (state.images.stats() if state.images else {})
    return JSONResponse({"status": "ok", "model": state.name, **busy})


@api
async def list_models(request: Request):
    state: ServerState = request.app.state.mix
    entry = {"id": state.name, "object": "model", "created": state.created, "owned_by": "mix"}
    return JSONResponse({"object": "list", "data": [entry]})


@api
async def chat_page(request: Request):
    return HTMLResponse(resources.files("mixcli.serve").joinpath("page.html").read_text(encoding="utf-8"))


async def http_error(request: Request, exc: HTTPException):
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    message = f"no route {request.method} {request.url.path}" if exc.status_code in (404, 405) else str(exc.detail)
    return error_response(ApiError(exc.status_code, message, kind))


def build_app(state: ServerState, hosts: HostPolicy | None = None) -> Starlette:
    """The application for one loaded model: chat completions for a vision-language model, image
    generations for a diffusion pipeline. ``hosts``: the Host headers it answers (server.make_server
    derives them from the socket; None, for an app not on a socket, checks none)."""
    from . import chat, images

    routes = [Route("/health", health), Route("/v1/models", list_models), Route("/", chat_page)]
    if state.engine is not None:
        routes.append(Route("/v1/chat/completions", api(chat.completions), methods=["POST"]))
    if state.pipeline is not None:
        routes.append(Route("/v1/images/generations", api(images.generations), methods=["POST"]))
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error})
    app.state.mix = state
    app.add_middleware(ApiKey, key=state.api_key)
    if hosts is not None:
        app.add_middleware(HostCheck, policy=hosts)
    app.add_middleware(RequestLog)
    return app


class ApiKey:
    """ASGI middleware: every route but OPEN_PATHS needs `Authorization: Bearer KEY` when a key is set."""

    def __init__(self, app, key: str | None):
        self.app, self.key = app, key

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.key is None or scope["path"] in OPEN_PATHS or self._authorized(scope):
            return await self.app(scope, receive, send)
        error = ApiError(401, "missing or wrong API key (send Authorization: Bearer KEY)", "authentication_error")
        await error_response(error)(scope, receive, send)

    def _authorized(self, scope) -> bool:
        header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        scheme, _, token = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.key.encode())


class HostCheck:
    """ASGI middleware: a request whose Host header the policy refuses gets a 421, on every route."""

    def __init__(self, app, policy: HostPolicy):
        self.app, self.policy = app, policy

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        raw = dict(scope["headers"]).get(b"host")
        header = raw.decode("latin-1") if raw is not None else None
        if self.policy.allows(header):
            return await self.app(scope, receive, send)
        await error_response(refusal(header))(scope, receive, send)


class RequestLog:
    """ASGI middleware: one line per request on stderr once it is answered: method, path, status,
    prompt and completion tokens (where a route counted them), seconds."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), {"code": 500}

        async def send_status(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            usage = scope.get("state", {}).get("usage") or {}
            tokens = f" prompt={usage['prompt_tokens']} completion={usage['completion_tokens']}" if usage else ""
            seconds = time.perf_counter() - start
            print(f"{scope['method']} {scope['path']} {status['code']}{tokens} {seconds:.3f}s", file=sys.stderr, flush=True)
