"""`mix infer` refuses option mixes it would silently ignore: a batch file with positional images or a video."""

from __future__ import annotations

import pytest
from PIL import Image


@pytest.mark.parametrize("model", ["ppocr-v4", "internvl2-1b"])
@pytest.mark.parametrize("inputs", [["IMAGE"], ["-"], ["--video", "clip.mp4"]])
def test_batch_with_images_is_a_usage_error(cli, tmp_path, model, inputs):
    image, batch = tmp_path / "img.png", tmp_path / "b.jsonl"
    Image.new("RGB", (32, 32), "white").save(image)
    batch.write_text('{"images": [], "question": "hi"}\n')
    args = [str(image) if a == "IMAGE" else a for a in inputs]
    result = cli("infer", model, *args, "--batch", str(batch), "-q", "what is it?")
    assert result.exit_code == 2, result.stdout + result.stderr
    assert "--batch" in result.stderr and result.stdout == ""
