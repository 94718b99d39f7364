"""Weight-only int8 (--quantize wint8): the compiled kernel against its NumPy oracle, the quantisation
error bound per layer, greedy agreement with fp32 on tiny InternVL2 and Qwen2-VL checkpoints (clear
margins first), the NumPy decode path against the Paddle one, the export round trip and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mixcli.runtime import import_paddle

paddle = import_paddle()

from helpers import assert_clear_margins, greedy_with_logits, json_of, picture  # noqa: E402
from internvl_ref import TinyInternVL  # noqa: E402
from internvl_ref import write_checkpoint as write_internvl  # noqa: E402
from qwen2_vl_ref import TinyQwen2VL  # noqa: E402
from qwen2_vl_ref import write_checkpoint as write_qwen2_vl  # noqa: E402
from mixcli import ext  # noqa: E402
from mixcli.errors import InputError  # noqa: E402
from mixcli.export.checkpoint import export_model  # noqa: E402
from mixcli.ext import ops  # noqa: E402
from mixcli.layers.quant import Wint8Linear  # noqa: E402
from mixcli.models import load_model  # noqa: E402
from mixcli.quant import dequantize_rows, quantize_rows  # noqa: E402
from mixcli.weights import read_safetensors  # noqa: E402

# Tiny random models quantise worse than real ones (a 32-64 wide dot product averages few rounding errors):
# their logits move by 0.5-4 % of the logit scale (real-size ones: benchmarks/bench_wint8.py).
LOGIT_ERROR = 5e-2

FAMILIES = {
    "internvl2-qwen2": lambda p: write_internvl(p, TinyInternVL(), seed=1),
    "internvl2.5-tied": lambda p: write_internvl(
        p, TinyInternVL(template="internvl2_5", tie_word_embeddings=True, num_key_value_heads=1), seed=1
    ),
    "internvl2-internlm2": lambda p: write_internvl(
        p, TinyInternVL(llm="internlm2", template="internlm2-chat", num_key_value_heads=2), seed=1
    ),
    "qwen2-vl": lambda p: write_qwen2_vl(p, TinyQwen2VL(), seed=1),
    "qwen2-vl-tied": lambda p: write_qwen2_vl(
        p, TinyQwen2VL(tie_word_embeddings=True, num_key_value_heads=4, mrope_section=(4, 2, 2)), seed=1
    ),
}


@pytest.fixture(scope="session")
def built(built):
    """conftest's session build, which must hold the wint8 op."""
    assert built is None or "mix_wint8_matmul" in built.ops, ext.failure()
    return built


def oracle(x: np.ndarray, q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """x @ (q * scale)^T in float64."""
    return x.astype(np.float64) @ (q.astype(np.float64) * scale[:, None].astype(np.float64)).T


def int8_case(rng, m, k, n):
    x = rng.standard_normal((m, k)).astype(np.float32)
    q = rng.integers(-127, 128, (n, k)).astype(np.int8)
    scale = (rng.random(n) * 0.02 + 1e-3).astype(np.float32)
    return x, q, scale


SHAPES = [(1, 896, 1152), (1, 4864, 896), (1, 7, 5), (1, 37, 13), (3, 129, 7), (5, 64, 250), (8, 33, 17), (2, 1, 3)]


@pytest.mark.parametrize("m, k, n", SHAPES)
def test_kernel_matches_the_numpy_oracle(built, m, k, n, monkeypatch):
    x, q, scale = int8_case(np.random.default_rng(m * k + n), m, k, n)
    expected = oracle(x, q, scale)
    tol = 1e-5 * np.abs(expected).max()
    if built is not None:  # the compiled op must run, not the fallback
        monkeypatch.setattr(ops.reference, "wint8_matmul", lambda *a: pytest.fail("fell back to plain Paddle"))
    paddle_out = ext.wint8_matmul(paddle.to_tensor(x), paddle.to_tensor(q), paddle.to_tensor(scale)).numpy()
    assert paddle_out.shape == (m, n) and np.abs(paddle_out - expected).max() <= tol
    host = ext.host_wint8_matmul(x, q, scale)
    assert (host is None) == (built is None)
    if host is not None:
        assert np.array_equal(host, paddle_out)  # one kernel behind both entry points
    dequant = ext.wint8_dequant(paddle.to_tensor(q), paddle.to_tensor(scale)).numpy()
    assert np.array_equal(dequant, dequantize_rows(q, scale))


def test_kernel_on_a_3d_input_and_the_fallback(built, monkeypatch):
    x, q, scale = int8_case(np.random.default_rng(5), 6, 40, 24)
    xs, qs, ss = paddle.to_tensor(x.reshape(2, 3, 40)), paddle.to_tensor(q), paddle.to_tensor(scale)
    fused = ext.wint8_matmul(xs, qs, ss).numpy()
    monkeypatch.setenv("MIX_EXT", "0")
    plain = ext.wint8_matmul(xs, qs, ss).numpy()
    assert ext.host_wint8_matmul(x, q, scale) is None
    expected = oracle(x, q, scale).reshape(2, 3, 24)
    for out in (fused, plain):
        assert out.shape == (2, 3, 24) and np.abs(out - expected).max() <= 1e-5 * np.abs(expected).max()


# w / scale is rounded to float32 before rounding to an integer: up to 127 x 2^-24 of a step more than 1/2.
ROUNDING = 1e-5


def half_step_error(w: np.ndarray, q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """max |w - q * scale| per output row, in steps of that row's scale (float64)."""
    s = scale.astype(np.float64)[:, None]
    return (np.abs(w.astype(np.float64) - q.astype(np.float64) * s) / s).max(axis=1)


def test_quantisation_error_is_at_most_half_a_step():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((300, 77)).astype(np.float32) * rng.random((300, 1)).astype(np.float32)
    w[7] = 0.0  # an all-zero output channel
    q, scale = quantize_rows(w)
    assert q.dtype == np.int8 and scale.dtype == np.float32 and scale.shape == (300,)
    assert np.all(half_step_error(w, q, scale) <= 0.5 + ROUNDING)
    nonzero = np.arange(300) != 7
    assert np.all(np.abs(q[nonzero]).max(axis=1) == 127)  # each channel's largest weight is +-127 exactly
    np.testing.assert_allclose(scale[nonzero], np.abs(w[nonzero]).max(axis=1) / 127, rtol=1e-6)
    assert not q[7].any() and scale[7] == 1.0


@pytest.fixture(scope="module", params=list(FAMILIES))
def pair(request, tmp_path_factory):
    """A tiny checkpoint, loaded in fp32 and with --quantize wint8."""
    path = FAMILIES[request.param](tmp_path_factory.mktemp(request.param))
    return path, load_model(path), load_model(path, quantize="wint8")


def linears(lm) -> dict:
    head = lm.tied_head if lm.config.tie_word_embeddings else lm.lm_head
    found = {f"model.layers.{name}": sub for name, sub in lm.model.layers.named_sublayers()}
    return {name: sub for name, sub in found.items() if hasattr(sub, "weight") and "norm" not in name} | {"head": head}


def test_every_language_model_linear_is_int8_within_half_a_step(pair):
    _, fp32, wint8 = pair
    fp_layers, q_layers = linears(fp32.net.language_model), linears(wint8.net.language_model)
    assert fp_layers.keys() == q_layers.keys() and len(q_layers) == 4 * len(fp32.net.language_model.model.layers) + 1
    for name, q_layer in q_layers.items():
        assert isinstance(q_layer, Wint8Linear), name
        ref = fp_layers[name].weight.numpy()
        w = ref if name == "head" and fp32.net.language_model.config.tie_word_embeddings else ref.T  # (out, in)
        scale = q_layer.weight_scale.numpy()
        assert np.all(half_step_error(w, q_layer.weight.numpy(), scale) <= 0.5 + ROUNDING), name
    assert wint8.quantized == "wint8" and fp32.quantized is None
    assert not any(isinstance(s, Wint8Linear) for s in fp32.net.sublayers())  # fp32 untouched without --quantize
    assert not any(isinstance(s, Wint8Linear) for n, s in wint8.net.named_sublayers() if "language_model" not in n)


def prompt_of(model):
    return model.prepare([("What is written here?", None)], [picture(100, 60, 3)])


def test_greedy_tokens_agree_with_fp32(pair):
    """Both sides' greedy choices lead by 10x the fp32 parity tolerance at every step (so neither sequence
    depends on rounding: the kernel's, the ISA's), the logits stay within LOGIT_ERROR of fp32's, and the
    quantised model picks fp32's tokens."""
    _, fp32, wint8 = pair
    prompt = prompt_of(fp32)
    ours, fp_logits = greedy_with_logits(fp32, prompt, 8)
    quant, q_logits = greedy_with_logits(wint8, prompt, 8)
    assert_clear_margins(fp_logits)
    assert_clear_margins(q_logits)
    assert quant.token_ids == ours.token_ids
    error = np.abs(q_logits - fp_logits).max() / max(1.0, np.abs(fp_logits).max())
    print(f"wint8 relative logit error: {error:.2e}")
    assert error <= LOGIT_ERROR


def three_steps(model, prompt) -> np.ndarray:
    """Logits of the prompt and of two decode steps."""
    cache = model.make_cache(len(prompt.ids) + 3)
    out = [model.forward(model.embed_prompt(prompt), cache).numpy()]
    for token in prompt.ids[-3:-1]:
        out.append(model.forward(model.embed_tokens([token]), cache).numpy())
    return np.concatenate(out)


def test_numpy_decode_path_and_no_ext_match_the_paddle_path(pair, monkeypatch):
    _, _, wint8 = pair
    prompt = prompt_of(wint8)
    lm = wint8.net.language_model
    assert lm.fast_decoder() is not None
    fast = three_steps(wint8, prompt)
    tol = 1e-5 * max(1.0, np.abs(fast).max())
    monkeypatch.setenv("MIX_FAST_DECODE", "0")
    assert lm.fast_decoder() is None
    np.testing.assert_allclose(fast, three_steps(wint8, prompt), atol=tol)
    monkeypatch.setenv("MIX_EXT", "0")  # plain Paddle: the int8 weights dequantised in every product
    np.testing.assert_allclose(fast, three_steps(wint8, prompt), atol=tol)
    monkeypatch.setenv("MIX_FAST_DECODE", "1")  # NumPy decode steps without the kernel
    np.testing.assert_allclose(fast, three_steps(wint8, prompt), atol=tol)


def test_batched_decode_rows_read_int8(pair):
    """serve decodes several requests in one step: (B, 1, H) rows through the kernel equal one at a time."""
    _, _, wint8 = pair
    layer = wint8.net.language_model.model.layers[0].mlp.down_proj
    x = paddle.to_tensor(np.random.default_rng(2).standard_normal((4, 1, layer.weight.shape[1])).astype(np.float32))
    rows = np.concatenate([layer(x[i : i + 1]).numpy() for i in range(4)])
    np.testing.assert_allclose(layer(x).numpy(), rows, rtol=1e-6, atol=1e-6)
    long = paddle.concat([x.reshape([1, 4, -1])] * 3, axis=1)  # 12 rows: the dequantised prefill path
    np.testing.assert_allclose(layer(long).numpy()[0, :4], rows[:, 0], rtol=1e-5, atol=1e-5)


def test_export_round_trip(pair, tmp_path):
    path, _, wint8 = pair
    out = tmp_path / "w8"
    result = export_model(str(path), out, quantize="wint8")
    assert result.quantize == "wint8" and result.quantized_tensors > 0
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "mix_wint8"
    tensors = read_safetensors(out / "model.safetensors")
    scales = [n for n in tensors if n.endswith(".weight_scale")]
    assert len(scales) == result.quantized_tensors
    for name in scales:
        q, s = tensors[name.removesuffix("_scale")], tensors[name]
        assert q.dtype == "int8" and s.dtype == "float32" and s.shape == q.shape[:1]
    assert all(tensors[n].dtype != "int8" for n in tensors if not n.startswith(("language_model", "model", "lm_head")))
    loaded = load_model(out)  # quantised again because its config says so
    assert loaded.quantized == "wint8"
    for a, b in zip(linears(wint8.net.language_model).values(), linears(loaded.net.language_model).values()):
        assert np.array_equal(a.weight.numpy(), b.weight.numpy())
        np.testing.assert_allclose(a.weight_scale.numpy(), b.weight_scale.numpy(), rtol=1e-6)
    prompt = prompt_of(wint8)
    np.testing.assert_allclose(three_steps(loaded, prompt), three_steps(wint8, prompt), rtol=1e-5, atol=1e-5)
    back = export_model(str(out), tmp_path / "float")  # the dequantised weights, a float config again
    assert back.quantize is None and "quantization_config" not in json.loads((tmp_path / "float/config.json").read_text())
    assert all(ref.dtype == "float32" for ref in read_safetensors(tmp_path / "float/model.safetensors").values())


def test_unknown_method_is_refused_before_loading(tmp_path, cli):
    with pytest.raises(InputError, match="unknown quantisation 'int4'"):
        load_model(tmp_path, quantize="int4")
    result = cli("infer", str(tmp_path), "-q", "hi", "--quantize", "int4")
    assert result.exit_code == 2 and "'int4' is not a quantisation" in result.stderr
    for command in (["export", str(tmp_path), "-o", str(tmp_path / "o")], ["chat", str(tmp_path)]):
        assert cli(*command, "--quantize", "fp4").exit_code == 2


def test_infer_quantize_wint8_on_the_command_line(pair, cli):
    path, _, wint8 = pair
    image = picture(100, 60, 3)
    image_file = path.parent / "picture.png"
    image.save(image_file)
    record = json_of(cli("infer", str(path), str(image_file), "-q", "What is written here?", "--max-new-tokens", "6",
                         "--quantize", "wint8", "--json"))  # fmt: skip
    expected, _ = greedy_with_logits(wint8, prompt_of(wint8), 6)
    assert record["quantize"] == "wint8" and record["token_ids"] == expected.token_ids[: len(record["token_ids"])]


def test_quantize_on_a_model_without_a_language_model_is_refused():
    from types import SimpleNamespace

    from mixcli.errors import MixError
    from mixcli.quant import quantize_model

    with pytest.raises(MixError, match="a CLIP model has no language model to quantise"):
        quantize_model(SimpleNamespace(family="CLIP"), "wint8")
