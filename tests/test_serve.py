"""`mix serve` driven by the official openai client against tiny checkpoints on a loopback port: the
models list, chat with images (the tokens `mix infer` gives), streaming, multi-turn history with a system
message, stop strings, concurrent requests, video, InternVL, and the request rules (bad requests, API key,
429, 413, timeouts, disconnects)."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from PIL import Image

from helpers import json_of, picture, write_gif
from internvl_ref import TinyInternVL
from internvl_ref import write_checkpoint as write_internvl
from qwen2_vl_ref import write_checkpoint as write_qwen2_vl
from serving import data_url, image_part, serving, vlm_state

from mixcli.generation import SamplingConfig, generate
from mixcli.vlm import load_vlm, prepare_request

QUESTION = "What is it?"


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    path = write_qwen2_vl(root / "qwen", seed=0)
    photo = root / "photo.png"
    picture(60, 40, seed=1).save(photo)
    return path, photo, load_vlm(str(path))


@pytest.fixture(scope="module")
def server(qwen):
    with serving(vlm_state(qwen[2])) as running:
        yield running


def ask(client, content, max_tokens: int = 8, **options):
    return client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": content}], max_tokens=max_tokens, **options
    )


def expected(loaded, turns, images, max_tokens: int, system=None, **sampling):
    prompt, cfg = prepare_request(loaded, turns, images, SamplingConfig(max_new_tokens=max_tokens, **sampling),
                                  system=system)  # fmt: skip
    return generate(loaded.model, prompt, prompt.ids, cfg)


def post(running, body, headers=None) -> httpx.Response:
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(running.api + "/chat/completions", content=data, timeout=60,
                      headers={"content-type": "application/json", **(headers or {})})  # fmt: skip


# ---- the API ----------------------------------------------------------------------------------------


def test_models_list_and_health(server):
    models = server.client().models.list()
    assert [m.id for m in models.data] == [server.state.name]
    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "ok" and health["model"] == server.state.name


def test_chat_with_an_image_gives_the_tokens_of_mix_infer(cli, server, qwen):
    path, photo, _ = qwen
    record = json_of(cli("infer", str(path), str(photo), "-q", QUESTION, "--max-new-tokens", "8", "--json"))
    reply = ask(server.client(), [image_part(data_url(Image.open(photo))), {"type": "text", "text": QUESTION}])
    assert reply.choices[0].message.content == record["text"]
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].finish_reason == record["finish_reason"] == "length"
    # image tokens are part of the prompt
    assert reply.usage.prompt_tokens == record["prompt_tokens"] > len(record["prompt_token_ids"]) // 2
    assert reply.usage.completion_tokens == record["generated_tokens"] == 8


def test_streaming_sends_the_same_text_in_openai_chunks(server, qwen):
    content = [image_part(data_url(Image.open(qwen[1]))), {"type": "text", "text": QUESTION}]
    whole = ask(server.client(), content)
    chunks = list(ask(server.client(), content, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == whole.usage.model_dump()


def test_stream_is_server_sent_events_ending_in_done(server):
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True}
    with httpx.stream("POST", server.api + "/chat/completions", json=body, timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in events)
    assert events[-1] == "data: [DONE]"
    assert [json.loads(e[6:])["object"] for e in events[:-1]] == ["chat.completion.chunk"] * (len(events) - 1)


def test_multi_turn_history_with_a_system_message(server, qwen):
    loaded, photo = qwen[2], Image.open(qwen[1]).convert("RGB")
    messages = [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": [image_part(data_url(photo)), {"type": "text", "text": QUESTION}]},
        {"role": "assistant", "content": "A picture of noise."},
        {"role": "user", "content": "And what colour is it?"},
    ]
    reply = server.client().chat.completions.create(model="tiny", messages=messages, max_tokens=6)
    turns = [("<image>" + QUESTION, "A picture of noise."), ("And what colour is it?", None)]
    want = expected(loaded, turns, [photo], 6, system="You answer briefly.")
    assert reply.choices[0].message.content == want.text
    assert reply.usage.prompt_tokens == len(want.prompt_token_ids)
    without_system = expected(loaded, turns, [photo], 6)
    assert len(without_system.prompt_token_ids) != len(want.prompt_token_ids)  # the system message was used


def test_stop_strings_end_the_text_before_them(server, qwen):
    free = ask(server.client(), "Tell me a long story.", max_tokens=16).choices[0].message.content
    stop = free[5:7]
    reply = ask(server.client(), "Tell me a long story.", max_tokens=16, stop=[stop])
    assert reply.choices[0].message.content == free[: free.index(stop)]
    assert reply.choices[0].finish_reason == "stop"


def test_sampling_with_a_seed_is_reproducible(server, qwen):
    options = dict(max_tokens=10, temperature=0.9, top_p=0.95, seed=11)
    first, second = (ask(server.client(), "hi", **options).choices[0].message.content for _ in range(2))
    want = expected(qwen[2], [("hi", None)], [], 10, temperature=0.9, top_p=0.95, seed=11)
    assert first == second == want.text


def test_concurrent_requests_give_the_sequential_texts(server):
    questions = ["hi", QUESTION, "Tell me a long story.", "Describe the picture in detail, please."]
    sequential = [ask(server.client(), q, max_tokens=24).choices[0].message.content for q in questions]
    batched_before = server.state.engine.batched_steps
    with ThreadPoolExecutor(len(questions)) as pool:
        replies = list(pool.map(lambda q: ask(server.client(), q, max_tokens=24), questions))
    assert [r.choices[0].message.content for r in replies] == sequential
    assert server.state.engine.batched_steps > batched_before  # they shared decode steps


def test_a_video_url(server, qwen, tmp_path):
    import base64

    gif = write_gif(tmp_path / "clip.gif", [picture(56, 56, seed=s) for s in range(4)], duration=250)
    url = "data:image/gif;base64," + base64.b64encode(gif.read_bytes()).decode()
    content = [{"type": "video_url", "video_url": {"url": url}}, {"type": "text", "text": "What happens?"}]
    reply = ask(server.client(), content, max_tokens=5)
    from mixcli.vlm import read_clip

    clip = read_clip(qwen[2], str(gif))
    prompt, cfg = prepare_request(qwen[2], [("<video>What happens?", None)], [], SamplingConfig(max_new_tokens=5), clip)
    assert reply.usage.prompt_tokens == len(prompt.ids)
    assert reply.choices[0].message.content == generate(qwen[2].model, prompt, prompt.ids, cfg).text


def test_internvl_answers_as_mix_infer(cli, tmp_path):
    path = write_internvl(tmp_path / "internvl", TinyInternVL(template="internvl2_5"), seed=3)
    photo = tmp_path / "photo.png"
    picture(90, 60, 5).save(photo)
    record = json_of(cli("infer", str(path), str(photo), "-q", QUESTION, "--max-new-tokens", "6", "--json"))
    with serving(vlm_state(load_vlm(str(path)))) as running:
        reply = ask(running.client(), [image_part(data_url(Image.open(photo))), {"type": "text", "text": QUESTION}], 6)
    assert reply.choices[0].message.content == record["text"]
    assert reply.usage.prompt_tokens == record["prompt_tokens"]


# ---- refusals -----------------------------------------------------------------------------------------


BAD_BODIES = [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "JSON object"),
    ({}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": "5"}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, "temperature"),
    ({"messages": [{"role": "user", "content": "hi"}], "top_p": 0}, "top_p"),
    ({"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}, "stream"),
    ({"messages": [{"role": "user", "content": "hi"}], "stop": [1]}, "stop"),
    ({"messages": [{"role": "user", "content": "hi"}], "n": 2}, "n=1"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "role"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}, "last message"),
    ({"messages": [{"role": "user", "content": [{"type": "audio"}]}]}, "type"),
    ({"messages": [{"role": "user", "content": [image_part("data:image/png;base64,@@@@")]}]}, "base64"),
    ({"messages": [{"role": "user", "content": [image_part("data:image/png;base64,aGVsbG8gd29ybGQ=")]}]}, "not an image"),
    ({"messages": [{"role": "user", "content": [image_part("data:image/png,raw")]}]}, "base64"),
    ({"messages": [{"role": "user", "content": [image_part("ftp://example.com/a.png")]}]}, "scheme"),
]


@pytest.mark.parametrize("body, words", BAD_BODIES)
def test_bad_requests_are_400_with_the_openai_error_shape(server, body, words):
    response = post(server, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert words in error["message"] and error["type"] == "invalid_request_error"


def test_the_server_keeps_serving_after_bad_requests(server):
    for body, _ in BAD_BODIES[:4]:
        post(server, body)
    assert ask(server.client(), "hi", max_tokens=2).usage.completion_tokens == 2
    with pytest.raises(openai.BadRequestError):
        ask(server.client(), [image_part("data:image/png;base64,aGVsbG8=")])


def test_unknown_routes_are_openai_style_404(server):
    response = httpx.get(server.api + "/nothing")
    assert response.status_code == 404 and response.json()["error"]["type"] == "not_found_error"
    assert httpx.post(server.api + "/images/generations", json={"prompt": "x"}).status_code == 404  # not a diffusion model


def test_the_api_key_guards_every_route_but_health(qwen):
    with serving(vlm_state(qwen[2], api_key="sesame")) as running:
        assert httpx.get(running.url + "/health").status_code == 200
        for key in ("none", "wrong"):
            with pytest.raises(openai.AuthenticationError):
                running.client(key).models.list()
        response = httpx.get(running.api + "/models", headers={"Authorization": "Bearer wrong"})
        assert response.status_code == 401 and response.json()["error"]["type"] == "authentication_error"
        assert ask(running.client("sesame"), "hi", max_tokens=2).usage.completion_tokens == 2


def test_a_full_queue_answers_429_with_retry_after(qwen):
    with serving(vlm_state(qwen[2], start=False, max_queue=1)) as running:  # the engine is stopped: requests wait
        waiting = threading.Thread(target=post, args=(running, {"messages": [{"role": "user", "content": "hi"}]}))
        waiting.start()
        while running.state.engine.stats()["waiting"] < 1:
            time.sleep(0.01)
        response = post(running, {"messages": [{"role": "user", "content": "hi"}]})
        assert response.status_code == 429 and response.headers["retry-after"] == "1"
        assert response.json()["error"]["type"] == "rate_limit_error"
        with pytest.raises(openai.RateLimitError):
            ask(running.client(), "hi")
    waiting.join(10)


def test_a_body_over_the_limit_is_413(qwen):
    with serving(vlm_state(qwen[2], max_body_bytes=2000)) as running:
        big = [image_part(data_url(picture(100, 100))), {"type": "text", "text": QUESTION}]
        response = post(running, {"messages": [{"role": "user", "content": big}]})
        assert response.status_code == 413 and "--max-body-mb" in response.json()["error"]["message"]
        chunked = httpx.post(running.api + "/chat/completions", content=iter([b"x" * 1500, b"y" * 1500]))
        assert chunked.status_code == 413
        assert ask(running.client(), "hi", max_tokens=2).usage.completion_tokens == 2


def test_oversized_images_are_refused_before_decoding(qwen):
    from mixcli.serve.media import MediaPolicy

    with serving(vlm_state(qwen[2], media=MediaPolicy(max_pixels=50 * 50))) as running:
        with pytest.raises(openai.BadRequestError, match="pixel limit"):
            ask(running.client(), [image_part(data_url(picture(60, 60)))])


def test_a_request_past_the_timeout_is_504(qwen):
    with serving(vlm_state(qwen[2], timeout_s=0.3)) as running:
        response = post(running, {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1500})
        assert response.status_code == 504 and response.json()["error"]["type"] == "timeout_error"
        engine = running.state.engine
        deadline = time.monotonic() + 2  # the worker drops it at its next step; far less than 1500 tokens
        while engine.stats()["running"] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert engine.stats() == {"running": 0, "waiting": 0}


def test_a_client_that_disconnects_cancels_its_generation(server):
    engine = server.state.engine
    body = {"messages": [{"role": "user", "content": "Tell me a long story."}], "max_tokens": 1500, "stream": True}
    with httpx.stream("POST", server.api + "/chat/completions", json=body, timeout=60) as response:
        lines = response.iter_lines()
        while '"content": ""' in (line := next(lines)) or not line:  # until the first generated text
            pass
        assert engine.stats()["running"] == 1
    deadline = time.monotonic() + 2  # far less than the 1500 tokens would take
    while engine.stats()["running"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert engine.stats()["running"] == 0


def test_a_waiting_non_streaming_client_that_leaves_cancels_too(server):
    engine = server.state.engine
    body = {"messages": [{"role": "user", "content": "Tell me a long story."}], "max_tokens": 1900}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.api + "/chat/completions", json=body, timeout=httpx.Timeout(60, read=0.5))
    deadline = time.monotonic() + 2  # far less than the 1500 tokens would take
    while engine.stats()["running"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert engine.stats()["running"] == 0
