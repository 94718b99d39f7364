"""DNS-rebinding protection of `mix serve`: which Host headers a server answers, from the address it is bound
to and --allow-host, checked on every route of the real server (uvicorn on a loopback port) and the command's
start-up warning when it listens on every interface."""

from __future__ import annotations

import socket

import httpx
import pytest

from helpers import error_line
from qwen2_vl_ref import write_checkpoint as write_qwen2_vl
from serving import serve_process, serving

from mixcli.errors import MixError
from mixcli.serve.app import ServerState
from mixcli.serve.hosts import host_policy, named_host, split_host


@pytest.mark.parametrize("header, parsed", [
    ("localhost:8000", ("localhost", 8000)), ("EXAMPLE.org", ("example.org", None)),
    ("[::1]:8000", ("::1", 8000)), ("[::1]", ("::1", None)), ("127.0.0.1:80", ("127.0.0.1", 80)),
    ("::1", None), ("a:b", None), (":80", None), ("[::1]x", None), ("", None),
])  # fmt: skip
def test_host_headers_are_split_into_name_and_port(header, parsed):
    assert split_host(header) == parsed


def test_a_loopback_server_answers_its_loopback_names_with_its_port_only():
    policy = host_policy("127.0.0.1", 8000)
    for header in ("127.0.0.1:8000", "localhost:8000", "LOCALHOST:8000", "[::1]:8000"):
        assert policy.allows(header), header
    for header in ("evil.example:8000", "evil.example", "localhost:8001", "localhost", "127.0.0.1.nip.io:8000", None):
        assert not policy.allows(header), header
    assert host_policy("127.0.0.1", 80).allows("localhost")  # no port in Host means 80


def test_allow_host_adds_names_with_any_port_or_the_one_given():
    policy = host_policy("::1", 8000, ("box.lan", "proxy.example:443"))
    assert policy.allows("[::1]:8000") and policy.allows("box.lan") and policy.allows("box.lan:9999")
    assert policy.allows("proxy.example:443") and not policy.allows("proxy.example:8000")
    assert not policy.allows("other.lan:8000")


def test_a_specific_address_answers_its_own_name_but_not_localhost():
    policy = host_policy("192.168.1.5", 8000)
    assert policy.allows("192.168.1.5:8000") and not policy.allows("localhost:8000")
    assert not policy.unasked_wildcard


def test_every_interface_without_allow_host_answers_any_name_and_asks_for_a_warning():
    for bound in ("0.0.0.0", "::"):
        policy = host_policy(bound, 8000)
        assert policy.allows("anything.example") and policy.unasked_wildcard
    policy = host_policy("0.0.0.0", 8000, ("box.lan",))  # once names are given, they are checked
    assert policy.allows("box.lan:8000") and policy.allows("localhost:8000") and not policy.allows("evil.example")
    assert not policy.unasked_wildcard


def test_a_host_given_by_name_is_allowed_beside_its_address():
    assert named_host("Box.LAN") == ("box.lan",) and named_host("localhost") == ("localhost",)
    assert named_host("127.0.0.1") == named_host("::1") == named_host("0.0.0.0") == ()
    assert host_policy("192.168.1.5", 8000, named_host("box.lan")).allows("box.lan:8000")


def test_a_star_turns_the_check_off_and_bad_entries_are_refused():
    assert host_policy("127.0.0.1", 8000, ("*",)).allows("evil.example")
    assert not host_policy("127.0.0.1", 8000, ("*",)).unasked_wildcard
    with pytest.raises(MixError, match="--allow-host"):
        host_policy("127.0.0.1", 8000, ("a:b:c",))


class _Idle:
    """An engine that answers /health; no request here reaches generation."""

    def stats(self):
        return {"running": 0, "waiting": 0}

    def drain(self, seconds):
        pass

    def close(self):
        pass


def test_the_server_refuses_other_hosts_on_every_route_with_an_openai_error():
    state = ServerState("tiny", engine=_Idle(), api_key="sesame")
    with serving(state) as running:
        port = running.url.rsplit(":", 1)[1]
        ok = httpx.get(running.url + "/health")
        assert ok.status_code == 200
        assert httpx.get(running.url + "/health", headers={"host": f"localhost:{port}"}).status_code == 200
        for path in ("/health", "/", "/v1/models", "/v1/chat/completions"):
            refused = httpx.get(running.url + path, headers={"host": f"rebound.example:{port}"})
            assert refused.status_code == 421, path
            error = refused.json()["error"]
            assert error["type"] == "invalid_request_error" and "--allow-host rebound.example" in error["message"]


def test_an_allowed_name_gets_through_to_the_api_key_check():
    state = ServerState("tiny", engine=_Idle(), api_key="sesame", allow_hosts=("box.lan",))
    with serving(state) as running:
        models = httpx.get(running.url + "/v1/models", headers={"host": "box.lan"})
        assert models.status_code == 401  # past the Host check, stopped by the key
        keyed = httpx.get(running.url + "/v1/models", headers={"host": "box.lan", "authorization": "Bearer sesame"})
        assert keyed.status_code == 200


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    return write_qwen2_vl(tmp_path_factory.mktemp("serve") / "qwen", seed=0)


def test_mix_serve_checks_hosts_and_warns_on_every_interface(qwen):
    with serve_process(str(qwen), "--allow-host", "box.lan") as (process, url, log):
        assert httpx.get(url + "/health", headers={"host": "box.lan"}).status_code == 200
        assert httpx.get(url + "/health", headers={"host": "evil.example"}).status_code == 421
    assert not any(line.startswith("warning:") for line in log)
    with serve_process(str(qwen), "--host", "0.0.0.0") as (process, url, log):
        port = url.rsplit(":", 1)[1]
        reply = httpx.get(f"http://127.0.0.1:{port}/health", headers={"host": "any.example"})
        assert reply.status_code == 200
    warnings = [line for line in log if line.startswith("warning:")]
    assert len(warnings) == 1 and "--allow-host" in warnings[0] and "DNS rebinding" in warnings[0]


def test_a_malformed_allow_host_is_one_error_line(cli, qwen):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    result = cli("serve", str(qwen), "--port", str(free), "--allow-host", "a:b:c")
    assert result.exit_code == 1 and "--allow-host" in error_line(result)
