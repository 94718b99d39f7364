"""`mix serve MODEL`: an OpenAI-compatible HTTP server for a vision-language or diffusion model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import MixError
from .options import (
    AdapterOpt,
    AllowPickleOpt,
    DeviceOpt,
    DtypeOpt,
    MaxNewTokensOpt,
    MaxPixelsOpt,
    ModelArg,
    QuantizeOpt,
    RepetitionPenaltyOpt,
    TemperatureOpt,
    TopKOpt,
    TopPOpt,
    sampling_config,
)

HostOpt = Annotated[str, typer.Option("--host", metavar="ADDRESS", help="Address to listen on (0.0.0.0: every interface).")]
AllowHostOpt = Annotated[
    Optional[list[str]],
    typer.Option("--allow-host", metavar="NAME",
                 help="Also answer requests whose Host header is NAME (any port) or NAME:PORT; repeatable; "
                      "'*' answers any. Others get 421 (DNS-rebinding protection)."),
]  # fmt: skip
PortOpt = Annotated[int, typer.Option("--port", min=0, max=65535, metavar="N", help="Port to listen on (0: any free one).")]
ApiKeyOpt = Annotated[
    Optional[str],
    typer.Option("--api-key", envvar="MIX_API_KEY", metavar="KEY",
                 help="Require `Authorization: Bearer KEY` on every route but /health (and the static chat page)."),
]  # fmt: skip
MaxQueueOpt = Annotated[int, typer.Option("--max-queue", min=0, metavar="N", help="Requests that may wait; more get 429.")]
MaxBatchOpt = Annotated[int, typer.Option("--max-batch", min=1, metavar="N", help="Requests decoded together in one step.")]
MaxBodyOpt = Annotated[float, typer.Option("--max-body-mb", min=0.001, metavar="M", help="Largest request body; larger get 413.")]
MaxImagePixelsOpt = Annotated[
    int, typer.Option("--max-image-pixels", min=1, metavar="N", help="Largest image a request may send (width x height).")
]
TimeoutOpt = Annotated[float, typer.Option("--timeout", min=0.1, metavar="S", help="Seconds a request may take.")]
LocalMediaOpt = Annotated[
    Optional[Path],
    typer.Option("--allow-local-media", metavar="DIR", file_okay=False, exists=True,
                 help="Let requests name image and video files (paths, file://) inside DIR."),
]  # fmt: skip
RemoteMediaOpt = Annotated[
    bool,
    typer.Option("--allow-remote-media",
                 help="Let requests name http(s) media URLs (public addresses only; timeouts and size caps apply)."),
]  # fmt: skip


def command(
    model: ModelArg,
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8000,
    api_key: ApiKeyOpt = None,
    allow_host: AllowHostOpt = None,
    max_queue: MaxQueueOpt = 16,
    max_batch: MaxBatchOpt = 8,
    max_body_mb: MaxBodyOpt = 20.0,
    max_image_pixels: MaxImagePixelsOpt = 40_000_000,
    timeout: TimeoutOpt = 600.0,
    allow_local_media: LocalMediaOpt = None,
    allow_remote_media: RemoteMediaOpt = False,
    max_new_tokens: MaxNewTokensOpt = 512,
    temperature: TemperatureOpt = 0.0,
    top_p: TopPOpt = 1.0,
    top_k: TopKOpt = 0,
    repetition_penalty: RepetitionPenaltyOpt = 1.0,
    max_pixels: MaxPixelsOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    allow_pickle: AllowPickleOpt = False,
    adapter: AdapterOpt = None,
    quantize: QuantizeOpt = None,
) -> None:
    """Serve a model with OpenAI's HTTP API and a chat page.

    The sampling options are the defaults for requests that leave them out. Requests must name the
    server in their Host header: its address, localhost when it listens on loopback, or an --allow-host."""
    from ..serve.server import require_packages

    require_packages()
    from ..serve.app import ServerState
    from ..serve.hosts import host_policy, named_host
    from ..serve.media import MB, MediaPolicy
    from ..serve.server import Limits, bind, is_pipeline, load_state, run

    if api_key is not None and not api_key.strip():
        raise MixError("the API key is empty", "pass --api-key KEY or unset MIX_API_KEY")
    defaults = sampling_config(max_new_tokens, temperature, top_p, top_k, repetition_penalty, None, None)
    defaults.validate()
    allow_hosts = (*(allow_host or ()), *named_host(host))
    host_policy(host, port, allow_hosts)  # a malformed --allow-host fails before loading
    limits = Limits(max_queue, max_batch, max_body_mb, timeout)
    media = MediaPolicy(allow_local_media, allow_remote_media, max_pixels=max_image_pixels)
    state = ServerState(model, defaults=defaults, media=media, api_key=api_key, allow_hosts=allow_hosts,
                        max_body_bytes=int(max_body_mb * MB), timeout_s=timeout)  # fmt: skip
    sock = bind(host, port)  # a busy port fails before minutes of loading
    if is_pipeline(model) and quantize is not None:
        raise MixError(f"{model} is a diffusion pipeline; --quantize applies to vision-language models", "drop --quantize")
    load = {} if is_pipeline(model) else {"adapter": adapter, "max_pixels": max_pixels, "quantize": quantize}
    load_state(model, state, limits, device, dtype, allow_pickle=allow_pickle, **load)
    run(state, sock)
