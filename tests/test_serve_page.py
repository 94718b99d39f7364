"""`mix serve`'s chat page at / in headless Chromium (Debian's chromium, driven by Playwright): a picture
picked and a question asked, the answer streamed into the page as the API streams it, a second turn
that carries the history."""

from __future__ import annotations

import shutil

import pytest
from PIL import Image

from helpers import picture
from qwen2_vl_ref import write_checkpoint as write_qwen2_vl
from serving import data_url, image_part, serving, vlm_state

from mixcli.generation import SamplingConfig
from mixcli.vlm import load_vlm

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# As root in a container: no sandbox; no background traffic to hosts the machine cannot reach.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]  # fmt: skip
# Every change to an answer's text, so the test can tell a streamed answer from one set at once.
RECORD_UPDATES = """
window.__updates = [];
new MutationObserver(() => {
  const last = [...document.querySelectorAll('.assistant span')].pop();
  if (last) window.__updates.push(last.textContent);
}).observe(document, { subtree: true, childList: true, characterData: true });
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = write_qwen2_vl(tmp_path_factory.mktemp("page") / "qwen", seed=0)
    state = vlm_state(load_vlm(str(path)), defaults=SamplingConfig(max_new_tokens=24))
    with serving(state) as running:
        yield running


@pytest.fixture
def page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.add_init_script(RECORD_UPDATES)
        yield page
        browser.close()


def ask_in_page(page, question: str) -> str:
    page.fill("#question", question)
    page.click("#send")
    page.wait_for_function("document.body.dataset.state === 'done'", timeout=60_000)
    page.evaluate("document.body.dataset.state = 'idle'")
    return page.locator(".assistant span").last.text_content()


def test_pick_an_image_ask_and_watch_the_answer_stream(server, page, tmp_path):
    photo = tmp_path / "photo.png"
    picture(60, 40, seed=1).save(photo)
    page.goto(server.url + "/")
    page.wait_for_function("document.getElementById('model').textContent !== '…'")
    assert page.text_content("#model") == server.state.name
    page.set_input_files("#image", str(photo))
    page.wait_for_function("document.getElementById('preview').style.display === 'inline'")
    first = ask_in_page(page, "What is it?")
    updates = page.evaluate("window.__updates")
    page.screenshot(path=str(tmp_path / "page.png"))

    client = server.client()
    content = [image_part(data_url(Image.open(photo))), {"type": "text", "text": "What is it?"}]
    messages = [{"role": "user", "content": content}]
    want = client.chat.completions.create(model="tiny", messages=messages).choices[0].message.content
    assert first == want and want
    assert len({u for u in updates if u}) > 2  # it grew piece by piece
    assert page.locator(".user img").count() == 1
    assert "generated tokens" in page.text_content("#status")

    second = ask_in_page(page, "And the colours?")
    messages += [{"role": "assistant", "content": want}, {"role": "user", "content": "And the colours?"}]
    assert second == client.chat.completions.create(model="tiny", messages=messages).choices[0].message.content


def test_the_page_shows_an_api_error(qwen_key_server, page):
    page.goto(qwen_key_server.url + "/")
    page.fill("#question", "hi")
    page.click("#send")
    page.wait_for_function("document.body.dataset.state === 'done'", timeout=60_000)
    assert "API key" in page.locator(".assistant span").last.text_content()
    page.fill("#key", "sesame")
    page.dispatch_event("#key", "change")
    assert ask_in_page(page, "hi") and "error" not in page.locator(".msg").last.get_attribute("class")


@pytest.fixture
def qwen_key_server(server):
    state = vlm_state(server.state.loaded, api_key="sesame", defaults=SamplingConfig(max_new_tokens=4))
    with serving(state) as running:
        yield running
