"""`mix chat MODEL [IMAGE|VIDEO ...]`: an interactive, streaming conversation with history."""

from __future__ import annotations

import signal
import sys
from contextlib import contextmanager
from typing import Annotated, Optional

import typer

from ..errors import MixError
from . import output
from .options import (
    AdapterOpt,
    AllowPickleOpt,
    DeviceOpt,
    DtypeOpt,
    FpsOpt,
    FramesOpt,
    MaxFramesOpt,
    MaxNewTokensOpt,
    MaxPixelsOpt,
    ModelArg,
    QuantizeOpt,
    RepetitionPenaltyOpt,
    SeedOpt,
    StopOpt,
    TemperatureOpt,
    TopKOpt,
    TopPOpt,
    VideoOpt,
    sampling_config,
)

HELP = (
    "commands: /image PATH, /video PATH (attach to the next message; one video per conversation), "
    "/clear (forget history), /exit"
)


@contextmanager
def ctrl_c_cancels(flag: dict):
    """While answering, Ctrl-C stops the answer instead of the session."""
    previous = signal.signal(signal.SIGINT, lambda *_: flag.update(cancel=True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def read_message(interactive: bool) -> str | None:
    """The next line from the user; None at end of input."""
    try:
        if interactive:
            output.stderr.print(">>> ", end="", markup=False)
        line = sys.stdin.readline()
    except KeyboardInterrupt:
        output.stderr.print()
        return ""
    return None if line == "" else line.rstrip("\n")


def run_command(session, message: str, options=None) -> bool:
    """Handle a /command; False means exit. options: how /video samples (a mixcli.vlm.VideoOptions)."""
    from ..images import load_image
    from ..vlm import read_clip

    name, _, arg = message.partition(" ")
    if name == "/exit":
        return False
    if name == "/clear":
        session.clear()
        output.log("history cleared")
    elif name == "/image" and arg.strip():
        session.add_image(load_image(arg.strip()))
        output.log(f"image attached: {arg.strip()}")
    elif name == "/video" and arg.strip():
        clip = read_clip(session.loaded, arg.strip(), options)
        session.add_video(clip)
        output.log(f"video attached: {arg.strip()} ({len(clip.frames)} frames at {clip.fps:.3g} per second)")
    else:
        output.log(HELP)
    return True


def command(
    model: ModelArg,
    images: Annotated[
        Optional[list[str]], typer.Argument(help="Images, and at most one video, for the first message.")
    ] = None,
    max_new_tokens: MaxNewTokensOpt = 512,
    temperature: TemperatureOpt = 0.0,
    top_p: TopPOpt = 1.0,
    top_k: TopKOpt = 0,
    repetition_penalty: RepetitionPenaltyOpt = 1.0,
    stop: StopOpt = None,
    seed: SeedOpt = None,
    video: VideoOpt = None,
    fps: FpsOpt = None,
    frames: FramesOpt = None,
    max_frames: MaxFramesOpt = None,
    max_pixels: MaxPixelsOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    allow_pickle: AllowPickleOpt = False,
    adapter: AdapterOpt = None,
    quantize: QuantizeOpt = None,
) -> None:
    """Chat with a vision-language model about images.

    Reads one message per line when stdin is not a terminal."""
    from ..images import load_image
    from ..video import probe
    from ..vlm import ChatSession, VideoOptions, check_model, load_vlm, read_clip, split_inputs

    sampling = sampling_config(max_new_tokens, temperature, top_p, top_k, repetition_penalty, seed, stop)
    check_model(model, "chat", sampling)
    options = VideoOptions(fps, frames, max_frames)
    options.validate()
    paths, video = split_inputs(images or [], video)
    pictures = [load_image(path) for path in paths]
    info = probe(video) if video is not None else None  # an unreadable video fails before the model loads
    loaded = load_vlm(model, device, dtype, allow_pickle, command="chat", adapter=adapter, max_pixels=max_pixels,
                      quantize=quantize)  # fmt: skip
    session = ChatSession(loaded, sampling)
    for picture in pictures:
        session.add_image(picture)
    if info is not None:
        session.add_video(read_clip(loaded, info, options))
    interactive = sys.stdin.isatty()
    if interactive:
        output.log(f"{model} loaded in {loaded.load_s:.1f} s. {HELP}")
    while (message := read_message(interactive)) is not None:
        if not message.strip():
            continue
        if message.startswith("/"):
            try:
                if not run_command(session, message.strip(), options):
                    break
            except MixError as e:
                if not interactive:
                    raise
                output.error(str(e))
            continue
        flag = {"cancel": False}
        with ctrl_c_cancels(flag):
            session.ask(message, on_text=output.stream, should_stop=lambda: flag["cancel"])
        output.stream("\n")
