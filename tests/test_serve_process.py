"""`mix serve` as the command runs it: images generations on a tiny Stable Diffusion pipeline (the PNGs
`mix generate` writes, metadata included), the request log on stderr, SIGTERM, and a busy port."""

from __future__ import annotations

import base64
import io
import json
import signal
import socket
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from helpers import error_line
from qwen2_vl_ref import write_checkpoint as write_qwen2_vl
from sd_ref import write_sd15
from serving import serve_process


@pytest.fixture(scope="module")
def sd15(tmp_path_factory):
    return write_sd15(tmp_path_factory.mktemp("sd15") / "pipe")


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    return write_qwen2_vl(tmp_path_factory.mktemp("serve") / "qwen", seed=0)


def test_images_generations_give_the_png_of_mix_generate(cli, sd15, tmp_path):
    from openai import OpenAI

    out = tmp_path / "cli.png"
    result = cli("generate", str(sd15), "a cat on a chair", "-o", str(out), "--steps", "2", "--size", "32x24",
                 "--seed", "5", "--negative-prompt", "blurry", "-n", "2")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    with serve_process(str(sd15)) as (process, url, log):
        client = OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120)
        reply = client.images.generate(
            model="tiny", prompt="a cat on a chair", n=2, size="32x24", response_format="b64_json",
            extra_body={"steps": 2, "seed": 5, "negative_prompt": "blurry"},
        )  # fmt: skip
        refused = httpx.post(url + "/v1/images/generations", json={"prompt": "x", "size": "30x30"})
        assert refused.status_code == 400 and "multiple of 8" in refused.json()["error"]["message"]
        assert httpx.post(url + "/v1/chat/completions", json={}).status_code == 404  # not a chat model
    for i, item in enumerate(reply.data):
        served = Image.open(io.BytesIO(base64.b64decode(item.b64_json)))
        with Image.open(tmp_path / f"cli-{i + 1}.png") as written:
            assert np.array_equal(np.asarray(served), np.asarray(written))
            assert served.text == written.text and served.text["seed"] == "5"
    assert any(line.startswith("POST /v1/images/generations 200") for line in log)


def stream_until_closed(url: str, events: list[str]) -> None:
    body = {"messages": [{"role": "user", "content": "Tell me a long story."}], "max_tokens": 1500, "stream": True}
    try:
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=30) as response:
            events.extend(line for line in response.iter_lines() if line)
    except httpx.HTTPError as e:
        events.append(f"closed: {e}")


def test_sigterm_stops_taking_requests_and_ends_running_ones_within_seconds(qwen):
    with serve_process(str(qwen)) as (process, url, log):
        assert httpx.get(url + "/health").json()["status"] == "ok"
        events: list[str] = []
        reader = threading.Thread(target=stream_until_closed, args=(url, events))
        reader.start()
        deadline = time.monotonic() + 120
        while not any('"content": "' in e and '"content": ""' not in e for e in events):
            assert reader.is_alive() and time.monotonic() < deadline, f"no token streamed: {events[-3:]}"
            time.sleep(0.02)
        start = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(15)
        elapsed = time.monotonic() - start
        reader.join(10)
    assert elapsed < 8 and process.returncode in (0, -signal.SIGTERM)
    assert events[-1] == "data: [DONE]"
    last = json.loads(events[-2][6:])  # finished within the drain time, or cancelled at its end
    assert last.get("error", {}).get("type") == "server_error" or last["choices"][0]["finish_reason"] == "length"
    assert any(line.startswith("POST /v1/chat/completions 200 prompt=") for line in log)
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/health")


def test_a_busy_port_is_one_error_line(cli, qwen):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        line = error_line(cli("serve", str(qwen), "--port", str(busy.getsockname()[1])))
    assert "cannot listen on 127.0.0.1" in line and "--port" in line
