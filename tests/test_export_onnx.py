"""`mix export --format onnx` of a Stable Diffusion pipeline: every component converted by paddle2onnx is
checked in onnxruntime against the dynamic model at export, equals diffusers'/transformers' component on
the same inputs, a wrong conversion (a LayerNorm with the wrong scale and bias, the kind of silent bug
paddle2onnx has on PIR graphs) is caught by that check, and an operator paddle2onnx lacks is named."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sd_ref import write_sd15


@pytest.fixture(scope="module")
def sd15(tmp_path_factory):
    return write_sd15(tmp_path_factory.mktemp("sd15") / "pipe")


@pytest.fixture(scope="module")
def exported(sd15, tmp_path_factory):
    from mixcli.export.graphs import export_graphs

    out = tmp_path_factory.mktemp("sd15-onnx") / "onnx"
    return out, export_graphs(str(sd15), out, "onnx").manifest


def inputs(manifest: dict, name: str) -> list[np.ndarray]:
    """The component's real export-time inputs, rebuilt from the dynamic pipeline."""
    from mixcli.diffusion.pipeline import load_pipeline
    from mixcli.export.diffusion import components

    pipe = load_pipeline(manifest["source"])
    found = {c.name: c for c, _ in components(pipe, tuple(manifest["settings"]["size"]))}
    return found[name].samples


def run_onnx(out, manifest: dict, name: str, arrays: list[np.ndarray]) -> list[np.ndarray]:
    from mixcli.export.onnx import Session

    return Session(out / manifest["components"][name]["files"][0])(*arrays)


def test_every_component_is_an_onnx_file_checked_in_onnxruntime(exported):
    out, manifest = exported
    assert manifest["format"] == "onnx"
    assert list(manifest["components"]) == ["text_encoder", "unet", "vae_decoder", "vae_encoder"]
    for name, part in manifest["components"].items():
        assert part["files"][0].endswith(".onnx") and (out / part["files"][0]).is_file(), name
        assert 0 <= part["max_abs_diff"] <= 1e-4 * part["output_scale"], name
    assert not list(out.rglob("*.pdiparams"))
    assert json.loads((out / "manifest.json").read_text()) == manifest


def test_group_norm_epsilons_are_the_models(sd15, exported):
    """paddle2onnx 2.1.0 reads Paddle's float64 attributes as float32 garbage unless the graph marks them float32."""
    import onnx

    out, manifest = exported
    for name in ("unet", "vae_decoder", "vae_encoder"):
        model = onnx.load(str(out / manifest["components"][name]["files"][0]))
        epsilons = {onnx.helper.get_attribute_value(a) for node in model.graph.node
                    if node.op_type == "InstanceNormalization" for a in node.attribute if a.name == "epsilon"}  # fmt: skip
        # diffusers' resnets in the UNet take norm_eps (1e-5), its attention blocks and the VAE's norms 1e-6
        expected = [1e-6, 1e-5] if name == "unet" else [1e-6]
        assert np.allclose(sorted(epsilons), expected, rtol=1e-6, atol=0), (name, epsilons)


def test_non_finite_outputs_fail_the_check():
    from mixcli.errors import MixError
    from mixcli.export.graphs import check

    with pytest.raises(MixError, match="non-finite"):
        check("vae_decoder", [np.array([np.nan, 0.0], np.float32)], [np.zeros(2, np.float32)], "onnxruntime")


def test_onnx_unet_equals_diffusers(sd15, exported):
    import torch
    from diffusers import UNet2DConditionModel

    out, manifest = exported
    sample, timestep, states = inputs(manifest, "unet")
    got = run_onnx(out, manifest, "unet", [sample, timestep, states])[0]
    unet = UNet2DConditionModel.from_pretrained(str(sd15 / "unet")).eval()
    with torch.no_grad():
        want = unet(torch.from_numpy(sample), float(timestep[0]), torch.from_numpy(states)).sample.numpy()
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_onnx_text_encoder_equals_transformers(sd15, exported):
    import torch
    from transformers import CLIPTextModel

    out, manifest = exported
    (ids,) = inputs(manifest, "text_encoder")
    last, _ = run_onnx(out, manifest, "text_encoder", [ids])
    model = CLIPTextModel.from_pretrained(str(sd15 / "text_encoder")).eval()
    with torch.no_grad():
        want = model(torch.from_numpy(ids)).last_hidden_state.numpy()
    assert np.abs(last - want).max() <= 1e-4 * np.abs(want).max()


def test_a_wrong_layer_norm_is_caught_by_the_check(sd15, exported, tmp_path):
    """The tiny text encoder's LayerNorms are at their init (scale 1, bias 0), where paddle2onnx's dropped
    scale and bias would change nothing; so the final one gets a wrong scale and bias instead."""
    import onnx
    from onnx import numpy_helper

    from mixcli.diffusion.pipeline import load_pipeline
    from mixcli.errors import MixError
    from mixcli.export.diffusion import components
    from mixcli.export.onnx import check_onnx

    out, manifest = exported
    model = onnx.load(str(out / manifest["components"]["text_encoder"]["files"][0]))
    initializers = {i.name: i for i in model.graph.initializer}
    norms = [n for n in model.graph.node if n.op_type == "LayerNormalization"]
    assert norms
    scale, bias = norms[-1].input[1:3]
    for name, value in ((scale, 1.5), (bias, 0.1)):
        tensor = numpy_helper.to_array(initializers[name])
        initializers[name].CopyFrom(numpy_helper.from_array(np.full_like(tensor, value), name))
    broken = tmp_path / "model.onnx"
    onnx.save(model, str(broken))
    pipe = load_pipeline(str(sd15))
    component = next(c for c, _ in components(pipe, tuple(manifest["settings"]["size"])) if c.name == "text_encoder")
    from mixcli.export.graphs import run_dynamic

    component.expected = run_dynamic(component)
    with pytest.raises(MixError, match=r"^text_encoder: onnxruntime differs from the dynamic model"):
        check_onnx(component, broken)


def test_an_operator_paddle2onnx_lacks_is_named(tmp_path):
    import paddle

    from mixcli.errors import MixError
    from mixcli.export.graphs import Component
    from mixcli.export.onnx import export_onnx

    class Addmm(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.weight = self.create_parameter([3, 4])
            self.bias = self.create_parameter([4])

        def forward(self, x):
            return paddle.addmm(self.bias.unsqueeze(0), x, self.weight)

    component = Component("projector", Addmm(), ["x"], ["y"], [np.ones((2, 3), np.float32)])
    with pytest.raises(MixError, match=r"^projector does not convert to ONNX: .*\(operator addmm\)"):
        export_onnx(component, tmp_path, "projector/model")
    assert not list(tmp_path.rglob("*.onnx"))
