"""`mix chat MODEL [IMAGE ...]`: an interactive, streaming conversation with history."""

from __future__ import annotations

import signal
import sys
from contextlib import contextmanager
from typing import Annotated, Optional

import typer

from ..errors import MixError
from . import output
from .options import AllowPickleOpt, DeviceOpt, DtypeOpt, ModelArg, SeedOpt

HELP = "commands: /image PATH (attach to the next message), /clear (forget history), /exit"


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


def run_command(session, message: str) -> bool:
    """Handle a /command; False means exit."""
    from ..images import load_image

    name, _, arg = message.partition(" ")
    if name == "/exit":
        return False
    if name == "/clear":
        session.clear()
        output.log("history cleared")
    elif name == "/image" and arg.strip():
        session.add_image(load_image(arg.strip()))
        output.log(f"image attached: {arg.strip()}")
    else:
        output.log(HELP)
    return True


def command(
    model: ModelArg,
    images: Annotated[Optional[list[str]], typer.Argument(help="Images for the first message.")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Most tokens per answer.")] = 512,
    temperature: Annotated[float, typer.Option("--temperature", help="0 is greedy.")] = 0.0,
    top_p: Annotated[float, typer.Option("--top-p")] = 1.0,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    allow_pickle: AllowPickleOpt = False,
) -> None:
    """Chat with a vision-language model; reads one message per line when stdin is not a terminal."""
    from ..generation import SamplingConfig
    from ..images import load_image
    from ..vlm import ChatSession, load_vlm

    pictures = [load_image(path) for path in images or []]
    loaded = load_vlm(model, device, dtype, allow_pickle)
    session = ChatSession(loaded, SamplingConfig(max_new_tokens, temperature, top_p, seed=seed))
    for picture in pictures:
        session.add_image(picture)
    interactive = sys.stdin.isatty()
    if interactive:
        output.log(f"{model} loaded in {loaded.load_s:.1f} s. {HELP}")
    while (message := read_message(interactive)) is not None:
        if not message.strip():
            continue
        if message.startswith("/"):
            try:
                if not run_command(session, message.strip()):
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
