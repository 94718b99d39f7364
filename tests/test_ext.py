"""The fused ops of ext/: each against its plain-Paddle path (forward, and backward for the norms), the
fallbacks (no compiler, a failed build, MIX_EXT=0, dtypes/shapes/devices a kernel does not take), the
cache (one build for two concurrent users), status and the CLI, and a model's logits with and without."""

from __future__ import annotations

import json
import threading
from types import SimpleNamespace

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from mixcli.runtime import import_paddle

paddle = import_paddle()

from helpers import assert_clear_margins, greedy_with_logits, json_of, picture  # noqa: E402
from qwen2_vl_ref import TinyQwen2VL, write_checkpoint  # noqa: E402
from mixcli import envcheck, ext  # noqa: E402
from mixcli.cli import ext as ext_cli  # noqa: E402
from mixcli.cli.errors import handle_errors  # noqa: E402
from mixcli.ext import build, ops, reference  # noqa: E402
from mixcli.ext.status import status  # noqa: E402
from mixcli.models import load_model  # noqa: E402

ROWS = [1, 3, 1023]
HIDDEN = [7, 64, 896, 1536]
EPS = 1e-6


@pytest.fixture(autouse=True)
def ext_cache(built, monkeypatch):
    """Each test sees the session's build in its cache (status() looks there), and only this file does."""
    if built is not None:
        monkeypatch.setenv("MIX_EXT_DIR", str(built.build.folder.parent))


OPS = ("rms_norm", "add_rms_norm", "layer_norm", "rotary", "rotary_tables", "swiglu", "quick_gelu", "attention")


@pytest.fixture
def fused_only(built, monkeypatch):
    """Make every fallback of mixcli.ext raise, so a test proves the compiled op ran (where there is a
    compiler); returns the plain-Paddle functions."""

    def refuse(*args, **kwargs):
        raise AssertionError("fell back to the plain-Paddle path")

    if built is not None:
        monkeypatch.setattr(ops, "reference", SimpleNamespace(**dict.fromkeys(OPS, refuse)))
    return {name: getattr(reference, name) for name in OPS}


@pytest.fixture
def loaded(built):
    """The loaded library, for the tests about it (status, CLI): they need a compiler."""
    if built is None:
        pytest.skip(f"no C++ compiler ({build.cxx_name()}): nothing is built here")
    return built


def tensor(rng, *shape, scale: float = 1.0, grad: bool = False) -> paddle.Tensor:
    t = paddle.to_tensor((rng.standard_normal(shape) * scale).astype(np.float32))
    t.stop_gradient = not grad
    return t


def assert_rel(ours, expected, tol: float = 1e-5) -> None:
    """max |ours - expected| <= tol * max |expected| (fp32: 1e-5)."""
    a, b = np.asarray(ours), np.asarray(expected)
    assert a.shape == b.shape and a.dtype == b.dtype
    assert np.abs(a - b).max() <= tol * max(np.abs(b).max(), 1e-30)


# ---- each op against the plain-Paddle path ---------------------------------------------------------


@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("hidden", HIDDEN)
def test_norms_and_their_gradients_match_paddle(rows, hidden, fused_only):
    rng = np.random.default_rng(rows * hidden)
    x, r, w, b = tensor(rng, rows, hidden, scale=3), tensor(rng, rows, hidden), tensor(rng, hidden), tensor(rng, hidden)
    assert_rel(ext.rms_norm(x, w, EPS), fused_only["rms_norm"](x, w, EPS))
    for ours, theirs in zip(ext.add_rms_norm(x, r, w, EPS), fused_only["add_rms_norm"](x, r, w, EPS)):
        assert_rel(ours, theirs)
    assert_rel(ext.layer_norm(x + 5, w, b, EPS), fused_only["layer_norm"](x + 5, w, b, EPS))  # mean far from 0


def differentiable(impl: dict) -> dict:
    """Each op as a function of the leaves (x, r, w, b), and which leaves it takes."""
    return {
        "rms_norm": (lambda x, r, w, b: impl["rms_norm"](x, w, EPS), "xw"),
        "add_rms_norm": (lambda x, r, w, b: impl["add_rms_norm"](x, r, w, EPS), "xrw"),
        "layer_norm": (lambda x, r, w, b: impl["layer_norm"](x, w, b, EPS), "xwb"),
        "swiglu": (lambda x, r, w, b: impl["swiglu"](x, r), "xr"),
        "swiglu_packed": (lambda x, r, w, b: impl["swiglu"](paddle.concat([x, r], axis=-1)), "xr"),
        "quick_gelu": (lambda x, r, w, b: impl["quick_gelu"](x), "x"),
    }


def gradients(fn, names: str, values: dict, upstream: np.ndarray) -> list[np.ndarray]:
    """d(sum(fn(...) * upstream)) / d(each input named); a pair's second output gets weight 0.5."""
    leaves = {k: paddle.to_tensor(v, stop_gradient=k not in names) for k, v in values.items()}
    out = fn(*leaves.values())
    dy = paddle.to_tensor(upstream)
    (out[0] * dy + out[1] * 0.5 if isinstance(out, tuple) else out * dy).sum().backward()
    return [leaves[k].grad.numpy() for k in names]


@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("op", ["rms_norm", "add_rms_norm", "layer_norm", "swiglu", "swiglu_packed", "quick_gelu"])
def test_backward_matches_paddle_autograd(rows, hidden, op, fused_only):
    rng = np.random.default_rng(rows + hidden)
    shapes = {"x": [rows, hidden], "r": [rows, hidden], "w": [hidden], "b": [hidden]}
    values = {k: (rng.standard_normal(s) * 2).astype(np.float32) for k, s in shapes.items()}
    dy = rng.standard_normal([rows, hidden]).astype(np.float32)
    (ours, names), (theirs, _) = differentiable(vars(ext))[op], differentiable(fused_only)[op]
    for a, b in zip(gradients(ours, names, values, dy), gradients(theirs, names, values, dy)):
        assert_rel(a, b)


@pytest.mark.parametrize("b, s, t, d", [(1, 3, 1, 64), (2, 6, 7, 128), (1, 14, 1023, 64), (1, 2, 5, 2)])
def test_rotary_and_its_gradient_match_paddle(b, s, t, d, fused_only):
    rng = np.random.default_rng(t * d)
    cos, sin = tensor(rng, t, d), tensor(rng, t, d)
    head_major, token_major = tensor(rng, b, s, t, d), tensor(rng, b, t, s, d)
    assert_rel(ext.rotary(head_major, cos, sin), fused_only["rotary"](head_major, cos, sin))
    assert_rel(ext.rotary(token_major, cos, sin, True), fused_only["rotary"](token_major, cos, sin, True))
    strided = token_major.transpose([0, 2, 1, 3])  # a view: the op copies it first
    assert_rel(ext.rotary(strided, cos, sin), fused_only["rotary"](strided.contiguous(), cos, sin))
    dy = rng.standard_normal([b, s, t, d]).astype(np.float32)
    for x, major in ((head_major, False), (token_major, True)):
        grads = [gradients(lambda x_, f=f: f(x_, cos, sin, major), "x", {"x": x.numpy()}, dy)[0]
                 for f in (ext.rotary, fused_only["rotary"])]  # fmt: skip
        assert_rel(*grads)


@pytest.mark.parametrize("section, p, t", [([16, 24, 24], 3, 1023), ([2, 3, 3], 3, 5), ([32], 1, 9)])
def test_rotary_tables_match_paddle(section, p, t, fused_only):
    d = 2 * sum(section)
    positions = paddle.to_tensor(np.random.default_rng(t).integers(0, 4000, (p, t)).astype(np.float32))
    inv_freq = 1.0 / (1e6 ** (paddle.arange(0, d, 2, dtype="float32") / d))
    for ours, theirs in zip(ext.rotary_tables(positions, inv_freq, section),
                            fused_only["rotary_tables"](positions, inv_freq, section)):  # fmt: skip
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), atol=2e-6)  # |cos|, |sin| <= 1


@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("hidden", HIDDEN)
def test_swiglu_and_quick_gelu_match_paddle(rows, hidden, fused_only):
    rng = np.random.default_rng(rows * 7 + hidden)
    gate, up = tensor(rng, 1, rows, hidden, scale=4), tensor(rng, 1, rows, hidden)
    assert_rel(ext.swiglu(gate, up), fused_only["swiglu"](gate, up))
    packed = paddle.concat([gate, up], axis=-1)
    assert_rel(ext.swiglu(packed), fused_only["swiglu"](gate, up))
    x = tensor(rng, rows, hidden, scale=6)
    assert_rel(ext.quick_gelu(x), fused_only["quick_gelu"](x))


@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("hidden", HIDDEN)
def test_bias_quick_gelu_matches_paddle(rows, hidden, fused_only):
    rng = np.random.default_rng(rows * 3 + hidden)
    x, bias = tensor(rng, rows, hidden, scale=4), tensor(rng, hidden)
    assert_rel(ext.bias_quick_gelu(x, bias), fused_only["quick_gelu"](x + bias))


def compiled_attention(built) -> None:
    if built is not None and "mix_attention" not in built.ops:
        pytest.skip("the attention kernel needs Paddle's MKL, which this Paddle build does not ship")


# (batch, query heads, key/value heads, queries, keys, head size): grouped heads, one query, several
# tiles of query rows (256 at most, 64 for 5000 keys), a head size that is not a multiple of 16
ATTENTION_SHAPES = [(1, 4, 4, 9, 9, 8), (2, 6, 2, 37, 50, 16), (1, 4, 1, 1, 33, 64), (1, 2, 2, 300, 300, 80),
                    (1, 2, 1, 70, 5000, 40), (1, 3, 3, 17, 17, 20)]  # fmt: skip


@pytest.mark.parametrize("b, h, hkv, t, s, d", ATTENTION_SHAPES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("token_major", [False, True])
def test_attention_matches_paddle(b, h, hkv, t, s, d, causal, token_major, built, fused_only):
    compiled_attention(built)
    rng = np.random.default_rng(b + h + t + s + d)
    swap = (lambda *shape: (shape[0], shape[2], shape[1], shape[3])) if token_major else (lambda *shape: shape)
    q = tensor(rng, *swap(b, h, t, d), scale=2)
    k, v = tensor(rng, *swap(b, hkv, s, d), scale=2), tensor(rng, *swap(b, hkv, s, d))
    ours = ext.attention(q, k, v, d**-0.5, causal, token_major)
    assert_rel(ours, fused_only["attention"](q, k, v, d**-0.5, causal, token_major), tol=2e-5)


def test_attention_with_gradients_or_mismatched_heads_falls_back(built):
    compiled_attention(built)
    rng = np.random.default_rng(4)
    q, k, v = tensor(rng, 1, 4, 5, 8, grad=True), tensor(rng, 1, 2, 5, 8), tensor(rng, 1, 2, 5, 8)
    assert not ext.attention_fits(q, k, v, causal=True, token_major=False)
    ext.attention(q, k, v, 0.3, causal=True).sum().backward()
    assert q.grad is not None and q.grad.shape == [1, 4, 5, 8]
    q = q.detach()
    assert ext.attention_fits(q, k, v, causal=True, token_major=False)
    assert not ext.attention_fits(q, tensor(rng, 1, 3, 5, 8), tensor(rng, 1, 3, 5, 8), False, False)  # 4 % 3
    assert not ext.attention_fits(q, k[:, :, :3], v[:, :, :3], causal=True, token_major=False)  # fewer keys


def test_extreme_values_stay_finite(fused_only):
    x = paddle.to_tensor(np.array([[-1e4, -100.0, -88.0, 0.0, 88.0, 100.0, 1e4]], dtype=np.float32))
    assert_rel(ext.quick_gelu(x), fused_only["quick_gelu"](x))
    assert_rel(ext.swiglu(x, x), fused_only["swiglu"](x, x))


# ---- fallbacks -------------------------------------------------------------------------------------


def test_unsupported_dtypes_shapes_and_gradients_fall_back():
    rng = np.random.default_rng(0)
    x64 = paddle.to_tensor(rng.standard_normal((3, 8)))
    w64 = paddle.to_tensor(rng.standard_normal(8))
    assert ext.rms_norm(x64, w64, EPS).dtype == paddle.float64
    assert_rel(ext.rms_norm(x64, w64, EPS), reference.rms_norm(x64, w64, EPS))
    x = tensor(rng, 3, 8)
    with pytest.raises(ValueError):  # a weight of the wrong size: Paddle's own error, not a crash in C++
        ext.rms_norm(x, tensor(rng, 5), EPS)
    odd = tensor(rng, 1, 2, 3, 5)  # odd head size: no rotate-half kernel
    cos, sin = tensor(rng, 3, 5), tensor(rng, 3, 5)
    assert_rel(ext.rotary(odd, cos, sin), reference.rotary(odd, cos, sin))
    assert ext.swiglu(tensor(rng, 2, 0)).shape == [2, 0]
    x, cos = tensor(rng, 1, 2, 3, 4), tensor(rng, 3, 4, grad=True)  # a gradient for the constant table:
    ext.rotary(x, cos, tensor(rng, 3, 4)).sum().backward()  # the kernel has none, plain Paddle runs
    assert cos.grad is not None and cos.grad.shape == [3, 4]


def test_mix_ext_0_turns_the_ops_off(loaded, fused_only, monkeypatch):
    monkeypatch.setenv("MIX_EXT", "0")
    assert ext.library() is None
    with pytest.raises(AssertionError, match="fell back"):
        ext.rms_norm(tensor(np.random.default_rng(0), 2, 4), paddle.ones([4]), EPS)


@pytest.fixture
def fresh_state(monkeypatch, tmp_path):
    """A process that has loaded nothing yet, with an empty cache of its own."""
    monkeypatch.setenv("MIX_EXT_DIR", str(tmp_path / "ext"))
    monkeypatch.setattr(ops, "_library", None)
    monkeypatch.setattr(ops, "_failure", None)


def test_no_compiler_says_one_line_once_and_falls_back(fresh_state, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-g++"))
    rng = np.random.default_rng(1)
    x, w = tensor(rng, 3, 64), tensor(rng, 64)
    outputs = [ext.rms_norm(x, w, EPS), ext.swiglu(x, x), ext.quick_gelu(x), ext.rms_norm(x, w, EPS)]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no C++ compiler found" in err and "plain Paddle" in err
    assert_rel(outputs[0], reference.rms_norm(x, w, EPS))
    assert_rel(outputs[1], reference.swiglu(x, x))
    assert_rel(outputs[2], reference.quick_gelu(x))
    ext.reset()  # the next process: the failure is remembered, said no more, and status reports it
    assert_rel(ext.rms_norm(x, w, EPS), outputs[0])
    assert capsys.readouterr().err == "" and "no C++ compiler found" in ext.failure()
    report = status()
    assert report["status"] == "failed" and report["compiler"] is None and "no-such-g++" in report["error"]
    found: list[envcheck.Problem] = []
    envcheck.check_ext(True, found)
    assert "failed to build" in found[0].problem and "mix ext build" in found[0].fix


def fake_compiler(folder, script: str) -> str:
    """A stand-in for g++: a shell script with this body."""
    path = folder / "g++"
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)
    return str(path)


def test_a_failing_compiler_is_one_line_with_its_first_error(fresh_state, monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", fake_compiler(tmp_path, "echo 'ops.cc:1:1: error: this compiler is broken' >&2; exit 1"))
    with pytest.raises(build.ExtBuildError, match="this compiler is broken") as caught:
        build.build(paddle)
    assert "mix ext build -v" in caught.value.fix
    assert not list((tmp_path / "ext").glob("*/manifest.json"))  # nothing half-built left behind
    assert status()["status"] == "failed"


def test_a_library_that_does_not_load_is_reported_and_skipped(fresh_state, capsys):
    target = build.current(paddle)
    target.folder.mkdir(parents=True)
    (target.folder / "manifest.json").write_text(json.dumps({"ops": list(build.ALL_OPS)}))
    target.library.write_bytes(b"not a shared library")
    x, w = tensor(np.random.default_rng(2), 2, 8), paddle.ones([8])
    assert_rel(ext.rms_norm(x, w, EPS), reference.rms_norm(x, w, EPS))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fused ops do not load" in err
    report = status()
    assert report["status"] == "broken" and set(report["ops"].values()) == {"broken"}
    found: list[envcheck.Problem] = []
    envcheck.check_ext(True, found)
    assert "do not load" in found[0].problem and found[0].fix == "rebuild them: mix ext build --force"


def test_two_users_at_once_build_once(fresh_state, monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", fake_compiler(tmp_path, "echo 'g++ 12'"))  # never compiles: _compile is replaced
    calls = []

    def slow_compile(paddle_, tools, out, verbose=False):
        calls.append(out)
        threading.Event().wait(0.3)
        (out / f"{build.LIB}.so").write_bytes(b"not really a library")

    monkeypatch.setattr(build, "_compile", slow_compile)
    results = []
    threads = [threading.Thread(target=lambda: results.append(build.build(paddle))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(results) == 2
    assert results[0].folder == results[1].folder and results[0].manifest == results[1].manifest
    assert results[0].library.read_bytes() == b"not really a library"


def test_the_cache_key_follows_sources_and_compiler(monkeypatch, tmp_path):
    tools = build.toolchain(paddle)
    key = build.fingerprint(paddle, tools)
    assert key == build.fingerprint(paddle, tools)
    other = build.Toolchain(cxx="/opt/other/g++", cxx_name="g++", cxx_version="g++ 99")
    assert build.fingerprint(paddle, other) != key
    copy = tmp_path / "sources"
    for path in build.source_files(cuda=False):
        target = copy / path.relative_to(build.source_root())
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes() + (b"\n// changed\n" if path.name == "kernels.cc" else b""))
    monkeypatch.setattr(build, "source_root", lambda: copy)
    assert build.fingerprint(paddle, tools) != key


# ---- status, check-env and the CLI -----------------------------------------------------------------


def test_status_and_check_env_list_every_op(loaded):
    report = status()
    assert report["status"] == "loadable" and report["devices"] == ["cpu"]
    assert report["ops"] == dict.fromkeys(build.ALL_OPS, "loadable") | dict.fromkeys(
        set(build.ALL_OPS) - set(build.built_ops(paddle)), "missing"
    )
    found: list[envcheck.Problem] = []
    assert envcheck.check_ext(True, found)["status"] == "loadable" and found == []
    row = dict(envcheck.summary_rows(envcheck.collect()))["ext ops"]
    assert row.startswith("loadable on cpu: rms_norm add_rms_norm")


@pytest.fixture
def mix_ext():
    """Run `mix ext ARGS...` with the error handling the app wraps commands in."""
    app = typer.Typer()
    for command in ext_cli.app.registered_commands:
        app.command(command.name)(handle_errors(command.callback))
    runner = CliRunner()
    return lambda *args: runner.invoke(app, list(args))


def test_cli_status_build_and_clean(loaded, mix_ext, monkeypatch, tmp_path):
    assert json_of(mix_ext("status", "--json"))["ops"]["quick_gelu"] == "loadable"
    result = mix_ext("build")  # already built: nothing to compile
    counts = f"{len(build.built_ops(paddle))}/{len(build.ALL_OPS)} ops"
    assert result.exit_code == 0 and result.stderr == "" and result.stdout.startswith(f"loadable: {counts} (cpu)")
    monkeypatch.setenv("MIX_EXT_DIR", str(tmp_path / "ext"))
    monkeypatch.setenv("CXX", str(tmp_path / "missing-g++"))
    result = mix_ext("build")
    assert result.exit_code == 1 and "no C++ compiler found" in result.stderr
    human = mix_ext("status")
    assert human.exit_code == 0 and human.stdout.startswith(f"failed: 0/{len(build.ALL_OPS)} ops") and "none found" in human.stdout
    clean = mix_ext("clean")
    assert clean.exit_code == 0 and not (tmp_path / "ext").exists()


# ---- a model with and without the fused ops ---------------------------------------------------------


@pytest.fixture(scope="module", params=["qwen2-vl", "qwen2.5-vl"])
def tiny_vlm(request, tmp_path_factory):
    knobs = TinyQwen2VL(qwen2_5=request.param == "qwen2.5-vl")
    path = write_checkpoint(tmp_path_factory.mktemp(request.param), knobs, seed=3)
    return load_model(path)


def run_model(model, monkeypatch) -> tuple[np.ndarray, list[int], np.ndarray]:
    """All logits of a one-image prompt, and 8 greedy tokens decoded on the Paddle path (not NumPy's)
    with the logits of each step. Picture seed 3: both variants' steps lead by >= 119x the parity tolerance
    (seed 0: 7x)."""
    prompt = model.prepare([("Describe the image.", None)], [picture(112, 84, 3)])
    cache = model.make_cache(len(prompt.ids) + 1)
    logits = model.forward(model.embed_prompt(prompt), cache, all_logits=True).numpy()[0]
    monkeypatch.setenv("MIX_FAST_DECODE", "0")
    result, steps = greedy_with_logits(model, prompt, max_new_tokens=8)
    return logits, result.token_ids, steps


def test_model_logits_and_tokens_agree_with_and_without_ext(built, tiny_vlm, monkeypatch):
    calls = []

    def counted(name):
        def fallback(*args, **kwargs):
            calls.append(name)
            return getattr(reference, name)(*args, **kwargs)

        return fallback

    monkeypatch.setattr(ops, "reference", SimpleNamespace(**{name: counted(name) for name in OPS}))
    fused_logits, fused_tokens, _ = run_model(tiny_vlm, monkeypatch)
    if built is not None:
        assert calls == []  # every op of the vision tower and the language model ran fused
    monkeypatch.setenv("MIX_EXT", "0")
    plain_logits, plain_tokens, plain_steps = run_model(tiny_vlm, monkeypatch)
    assert {"rms_norm", "add_rms_norm", "rotary", "swiglu"} <= set(calls)
    assert_rel(fused_logits, plain_logits, 1e-5)
    assert_clear_margins(plain_steps)
    assert fused_tokens == plain_tokens
