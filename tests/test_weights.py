"""Checkpoint reading and loading: formats, dtypes, transposition, errors and name rules."""

from __future__ import annotations

import json

import numpy as np
import paddle
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file as torch_save_file

from mixcli.errors import CheckpointError
from mixcli.weights import (
    Checkpoint,
    add_prefix,
    linear_weight_names,
    load_config,
    load_into,
    open_checkpoint,
    rename,
    save_safetensors,
    strip_prefix,
)


class Tiny(paddle.nn.Layer):
    """Embedding, a Linear, a square non-Linear matrix, a norm and an integer buffer."""

    def __init__(self):
        super().__init__()
        self.embed = paddle.nn.Embedding(10, 4)
        self.proj = paddle.nn.Linear(4, 6)
        self.square = paddle.nn.Linear(6, 6)
        self.mix = self.create_parameter([6, 6])
        self.norm = paddle.nn.LayerNorm(6)
        self.register_buffer("count", paddle.zeros([1], dtype="int64"))


def torch_layout(seed: int = 0) -> dict[str, np.ndarray]:
    """Tensors for Tiny as a PyTorch checkpoint stores them: Linear weights are (out, in)."""
    rng = np.random.default_rng(seed)
    shapes = {
        "embed.weight": (10, 4), "proj.weight": (6, 4), "proj.bias": (6,), "square.weight": (6, 6),
        "square.bias": (6,), "mix": (6, 6), "norm.weight": (6,), "norm.bias": (6,),
    }  # fmt: skip
    weights = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    weights["count"] = np.array([7], dtype=np.int64)
    return weights


def state(layer) -> dict[str, np.ndarray]:
    as_numpy = {k: v.astype("float32") if v.dtype == paddle.bfloat16 else v for k, v in layer.state_dict().items()}
    return {k: v.numpy() for k, v in as_numpy.items()}


def assert_loaded_torch_layout(layer, weights) -> None:
    got = state(layer)
    for name, value in weights.items():
        expected = value.T if name in ("proj.weight", "square.weight") else value
        np.testing.assert_array_equal(got[name], expected, err_msg=name)


# --- reading --------------------------------------------------------------------------------


def test_single_file_roundtrip_and_reference_reader_agree(tmp_path):
    tensors = {
        "a": np.arange(12, dtype=np.float32).reshape(3, 4),
        "h": np.linspace(-2, 2, 5).astype(np.float16),
        "i": np.array([[1, -2]], dtype=np.int64),
        "b": np.array([True, False]),
        "empty": np.zeros((0, 3), np.float32),
        "scalar": np.array(3.5, np.float64),
    }
    path = save_safetensors(tensors, tmp_path / "model.safetensors")
    ckpt = open_checkpoint(tmp_path)
    assert sorted(ckpt) == sorted(tensors) and ckpt.layout == "torch"
    assert ckpt["h"].dtype == "float16" and ckpt["a"].shape == (3, 4)
    with safe_open(path, framework="numpy") as ref:
        for name, value in tensors.items():
            np.testing.assert_array_equal(ckpt[name].numpy(), value)
            np.testing.assert_array_equal(ref.get_tensor(name), value)
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]  # no temp file left


def test_sharded_checkpoint_via_index(tmp_path):
    weights = torch_layout()
    names = sorted(weights)
    save_safetensors({k: weights[k] for k in names[:4]}, tmp_path / "model-00001-of-00002.safetensors")
    save_safetensors({k: weights[k] for k in names[4:]}, tmp_path / "model-00002-of-00002.safetensors")
    index = {"weight_map": {k: f"model-0000{1 + (i >= 4)}-of-00002.safetensors" for i, k in enumerate(names)}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    ckpt = open_checkpoint(tmp_path)
    assert [f.name for f in ckpt.files] == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    layer = Tiny()
    load_into(layer, ckpt, transpose=linear_weight_names(layer))
    assert_loaded_torch_layout(layer, weights)


def test_variant_index_is_found_and_plain_files_preferred(tmp_path):
    weights = {"x": np.ones(2, np.float32)}
    save_safetensors(weights, tmp_path / "unet.safetensors")
    save_safetensors({"x": np.zeros(2, np.float16)}, tmp_path / "unet.fp16.safetensors")
    assert [f.name for f in open_checkpoint(tmp_path).files] == ["unet.safetensors"]
    save_safetensors(weights, tmp_path / "diffusion_pytorch_model-00001-of-00001.safetensors")
    index = {"weight_map": {"x": "diffusion_pytorch_model-00001-of-00001.safetensors"}}
    (tmp_path / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    assert open_checkpoint(tmp_path).files[0].name.startswith("diffusion_pytorch_model-00001")


def test_bfloat16_matches_torch_conversion(tmp_path):
    values = torch.randn(6, 4, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    values[0, :3] = torch.tensor([float("inf"), -0.0, 1e-40])  # inf, signed zero, a subnormal
    bias = torch.zeros(6, dtype=torch.bfloat16)
    torch_save_file({"proj.weight": values, "proj.bias": bias}, tmp_path / "m.safetensors")
    ckpt = open_checkpoint(tmp_path / "m.safetensors")
    expected = values.float().numpy()
    assert ckpt["proj.weight"].dtype == "bfloat16"
    np.testing.assert_array_equal(ckpt["proj.weight"].numpy(), expected)
    fp32 = paddle.nn.Linear(4, 6)
    load_into(fp32, {k[5:]: v for k, v in ckpt.items()}, transpose={"weight"})
    np.testing.assert_array_equal(fp32.weight.numpy(), expected.T)
    bf16 = paddle.nn.Linear(4, 6)
    load_into(bf16, {k[5:]: v for k, v in ckpt.items()}, transpose={"weight"}, dtype="bfloat16")
    assert bf16.weight.dtype == paddle.bfloat16
    np.testing.assert_array_equal(bf16.weight.astype("float32").numpy(), expected.T)


def test_float16_is_cast_to_the_parameter_dtype(tmp_path):
    weights = {k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in torch_layout().items()}
    save_safetensors(weights, tmp_path / "model.safetensors")
    layer = Tiny()
    load_into(layer, open_checkpoint(tmp_path), transpose=linear_weight_names(layer))
    assert layer.proj.weight.dtype == paddle.float32
    widened = {k: v.astype(np.float32) if v.dtype == np.float16 else v for k, v in weights.items()}
    assert_loaded_torch_layout(layer, widened)


def test_dtype_override_converts_floats_and_keeps_integer_buffers(tmp_path):
    save_safetensors(torch_layout(), tmp_path / "model.safetensors")
    layer = Tiny()
    load_into(layer, open_checkpoint(tmp_path), transpose=linear_weight_names(layer), dtype="float16")
    assert layer.embed.weight.dtype == paddle.float16 and layer.count.dtype == paddle.int64
    assert int(layer.count.numpy()[0]) == 7


def test_lazy_layer_is_materialised_by_loading(tmp_path):
    save_safetensors(torch_layout(), tmp_path / "model.safetensors")
    with paddle.LazyGuard():
        layer = Tiny()
    load_into(layer, open_checkpoint(tmp_path), transpose=linear_weight_names(layer))
    assert_loaded_torch_layout(layer, torch_layout())
    out = layer.proj(paddle.ones([1, 4]))
    expected = torch_layout()["proj.weight"].sum(1) + torch_layout()["proj.bias"]
    np.testing.assert_allclose(out.numpy()[0], expected, rtol=1e-5)


# --- transposition --------------------------------------------------------------------------


def test_transposition_follows_the_rule_not_the_shape():
    weights = torch_layout()
    layer = Tiny()
    assert linear_weight_names(layer) == {"proj.weight", "square.weight"}
    load_into(layer, weights, transpose=lambda name: name.endswith(("proj.weight", "square.weight")))
    # square.weight (6x6) is transposed, the equally square "mix" is not.
    assert_loaded_torch_layout(layer, weights)


def test_paddle_layout_is_never_transposed(tmp_path):
    layer = Tiny()
    src = Tiny()
    paddle.save(src.state_dict(), str(tmp_path / "model_state.pdparams"))
    ckpt = open_checkpoint(tmp_path, allow_pickle=True)
    assert ckpt.layout == "paddle"
    load_into(layer, ckpt, transpose=linear_weight_names(layer))
    for name, value in state(src).items():
        np.testing.assert_array_equal(state(layer)[name], value, err_msg=name)


def test_caller_tensors_are_copied_not_shared():
    a, b = paddle.nn.Linear(3, 3), paddle.nn.Linear(3, 3)
    load_into(b, a.state_dict(), transpose=(), layout="paddle")
    a.weight.set_value(paddle.zeros([3, 3]))
    assert float(b.weight.abs().sum()) > 0


# --- mismatches -----------------------------------------------------------------------------


def test_missing_and_unexpected_are_named_with_counts():
    weights = torch_layout()
    del weights["norm.bias"]
    weights.update({f"extra.{i}": np.zeros(1, np.float32) for i in range(8)})
    with pytest.raises(CheckpointError) as info:
        load_into(Tiny(), weights, transpose=set())
    message = str(info.value)
    assert "1 missing (norm.bias)" in message
    assert "8 unexpected (extra.0, extra.1, extra.2, extra.3, extra.4, … 3 more)" in message
    assert info.value.fix


def test_non_strict_load_reports_what_it_left_out():
    weights = torch_layout()
    del weights["mix"]
    weights["rotary.inv_freq"] = np.zeros(2, np.float32)
    layer = Tiny()
    result = load_into(layer, weights, transpose=linear_weight_names(layer), strict=False)
    assert result.missing == ["mix"] and result.unexpected == ["rotary.inv_freq"]
    np.testing.assert_array_equal(layer.norm.weight.numpy(), weights["norm.weight"])


def test_shape_mismatch_is_reported_before_anything_is_assigned():
    weights = torch_layout()
    weights["proj.weight"] = weights["proj.weight"].T.copy()  # already (in, out): wrong for torch layout
    layer = Tiny()
    before = layer.embed.weight.numpy().copy()
    expected = r"1 tensors have the wrong shape: proj.weight \(checkpoint \[6, 4\], model \[4, 6\]\)"
    with pytest.raises(CheckpointError, match=expected):
        load_into(layer, weights, transpose=linear_weight_names(layer))
    np.testing.assert_array_equal(layer.embed.weight.numpy(), before)


# --- pickles --------------------------------------------------------------------------------


def test_pdparams_refused_without_allow_pickle(tmp_path):
    paddle.save(Tiny().state_dict(), str(tmp_path / "model_state.pdparams"))
    with pytest.raises(CheckpointError, match="pickle") as info:
        open_checkpoint(tmp_path)
    assert "--allow-pickle" in info.value.fix and "MIX_ALLOW_PICKLE=1" in info.value.fix


def test_pdparams_bfloat16_kept(tmp_path):
    layer = paddle.nn.Linear(2, 3)
    paddle.save({"w": layer.weight.astype("bfloat16")}, str(tmp_path / "w.pdparams"))
    ref = open_checkpoint(tmp_path / "w.pdparams", allow_pickle=True)["w"]
    assert ref.dtype == "bfloat16" and ref.shape == (2, 3)
    np.testing.assert_array_equal(ref.numpy(), layer.weight.astype("bfloat16").astype("float32").numpy())


def test_torch_bin_loads_with_allow_pickle(tmp_path):
    weights = torch_layout()
    torch.save({k: torch.from_numpy(v) for k, v in weights.items()}, tmp_path / "pytorch_model.bin")
    (tmp_path / "training_args.bin").write_bytes(b"not weights")  # ignored: not a pytorch_model*.bin
    with pytest.raises(CheckpointError, match="pytorch_model.bin is a pickle file"):
        open_checkpoint(tmp_path)
    ckpt = open_checkpoint(tmp_path, allow_pickle=True)
    assert ckpt.layout == "torch"
    layer = Tiny()
    load_into(layer, ckpt, transpose=linear_weight_names(layer))
    assert_loaded_torch_layout(layer, weights)


# --- broken files ---------------------------------------------------------------------------


def test_truncated_safetensors_names_the_file(tmp_path):
    path = save_safetensors(torch_layout(), tmp_path / "model.safetensors")
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="model.safetensors is truncated or corrupt") as info:
        open_checkpoint(tmp_path)
    assert "mix download" in info.value.fix


@pytest.mark.parametrize("content", [b"", b"\x05\x00", b"\xff" * 8 + b"{}", b"\x04\x00\x00\x00\x00\x00\x00\x00{no}"])
def test_garbage_safetensors_is_corrupt(tmp_path, content):
    (tmp_path / "model.safetensors").write_bytes(content)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        open_checkpoint(tmp_path)


def test_index_naming_a_missing_shard(tmp_path):
    save_safetensors({"a": np.ones(1, np.float32)}, tmp_path / "model-00001-of-00002.safetensors")
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="names shard model-00002-of-00002.safetensors, which is missing"):
        open_checkpoint(tmp_path)


def test_directory_without_weights_or_config(tmp_path):
    with pytest.raises(CheckpointError, match="no weight files"):
        open_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="has no config.json") as info:
        load_config(tmp_path)
    assert "mix download" in info.value.fix
    (tmp_path / "config.json").write_text('{"model_type": "qwen2"')
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_config(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "qwen2"}')
    assert load_config(tmp_path) == {"model_type": "qwen2"}


def test_missing_path():
    with pytest.raises(CheckpointError, match="does not exist"):
        open_checkpoint("/nonexistent/model.safetensors")


# --- name rules -----------------------------------------------------------------------------

RULES = [
    (r"\.rotary_emb\.inv_freq$", None),
    strip_prefix("model."),
    (r"^visual\.blocks\.(\d+)\.attn\.qkv\.", r"vision.layers.\1.attn.qkv."),
    add_prefix("language_model."),
]


def test_rename_rules_are_idempotent_and_pure(tmp_path):
    names = ["model.embed.weight", "model.layers.0.rotary_emb.inv_freq", "visual.blocks.3.attn.qkv.weight"]
    save_safetensors({n: np.zeros(1, np.float32) for n in names}, tmp_path / "model.safetensors")
    ckpt = open_checkpoint(tmp_path)
    once = rename(ckpt, RULES)
    assert sorted(once) == ["language_model.embed.weight", "language_model.vision.layers.3.attn.qkv.weight"]
    assert isinstance(once, Checkpoint) and once.layout == "torch"
    assert dict(rename(once, RULES)) == dict(once)
    assert "model.embed.weight" in ckpt  # the input is untouched


def test_rename_refuses_two_names_for_one_tensor():
    with pytest.raises(CheckpointError, match="both map to embed.weight"):
        rename({"model.embed.weight": 1, "embed.weight": 2}, [strip_prefix("model.")])
