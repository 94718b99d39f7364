"""PP-OCRv4 on transparent images: flattened as rapidocr-paddle's LoadImage does (white text on a clear
background reads), and an image without text says so on stderr."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from helpers import json_lines, picture
from mixcli.images import load_image
from mixcli.ocr import OcrPipeline
from mixcli.ocr.imageops import ocr_rgb

TEXT = "Hello 2024"


def lettering(fill, background=(0, 0, 0, 0), mode: str = "RGBA") -> Image.Image:
    """TEXT in Pillow's built-in scalable font (36 px, which the recogniser reads) on ``background``."""
    img = Image.new(mode, (360, 80), background)
    ImageDraw.Draw(img).text((12, 16), TEXT, fill=fill, font=ImageFont.load_default(size=36))
    return img


def soft_edges(img: Image.Image) -> Image.Image:
    """Anti-aliased alpha: the text's alpha ramps (a blur), the colours stay."""
    from PIL import ImageFilter

    alpha = img.getchannel("A").filter(ImageFilter.GaussianBlur(1.5))
    out = img.copy()
    out.putalpha(alpha)
    return out


def noisy_alpha(width: int = 40, height: int = 30) -> Image.Image:
    rng = np.random.default_rng(3)
    return Image.fromarray(rng.integers(0, 256, (height, width, 4), dtype=np.uint8), "RGBA")


CASES = {
    "white text on clear": lambda: lettering((255, 255, 255, 255)),
    "black text on clear": lambda: lettering((0, 0, 0, 255)),
    "soft white text on clear": lambda: soft_edges(lettering((255, 255, 255, 255))),
    "red text on half-clear blue": lambda: lettering((220, 20, 20, 255), (0, 0, 200, 128)),
    "opaque rgba photo": lambda: picture(40, 30).convert("RGBA"),
    "random alpha": noisy_alpha,
    "grey text on clear (LA)": lambda: lettering((255, 255), (0, 0), "LA"),
    "fully clear": lambda: Image.new("RGBA", (20, 10), (90, 90, 90, 0)),
}


@pytest.fixture(scope="module")
def pipeline() -> OcrPipeline:
    return OcrPipeline()


@pytest.mark.parametrize("name", list(CASES))
def test_transparency_is_flattened_as_rapidocr_does(tmp_path, name):
    from rapidocr_paddle.utils.load_image import LoadImage

    path = tmp_path / "in.png"
    CASES[name]().save(path)
    expected = LoadImage()(str(path))[:, :, ::-1]  # rapidocr's BGR, as RGB
    loaded = load_image(str(path), keep_alpha=True)
    assert loaded.mode in ("RGBA", "LA")
    ours = ocr_rgb(loaded)
    assert ours.dtype == np.uint8 and np.array_equal(ours, expected)


def test_a_palette_image_with_transparency_is_flattened_as_its_rgba(tmp_path):
    rgba = lettering((255, 255, 255, 255))
    path = tmp_path / "palette.png"
    rgba.convert("P", palette=Image.ADAPTIVE, colors=8).save(path, transparency=0)
    loaded = load_image(str(path), keep_alpha=True)
    assert loaded.mode == "RGBA"
    assert np.array_equal(ocr_rgb(Image.open(path)), ocr_rgb(loaded))


def test_without_keep_alpha_images_still_go_on_white(tmp_path):
    path = tmp_path / "clear.png"
    lettering((0, 0, 0, 255)).save(path)
    assert load_image(str(path)).mode == "RGB" and load_image(str(path)).getpixel((0, 0)) == (255, 255, 255)


def test_white_text_on_a_transparent_png_reads_as_rapidocr_reads_it(pipeline, tmp_path):
    from rapidocr_paddle import RapidOCR

    path = tmp_path / "white.png"
    lettering((255, 255, 255, 255)).save(path)
    reference, _ = RapidOCR()(str(path))
    ours = pipeline(load_image(str(path), keep_alpha=True)).lines
    assert [line.text for line in ours] == [text for _, text, _ in reference] == [TEXT]
    for line, (box, _, score) in zip(ours, reference):
        assert np.abs(np.array(line.box) - np.array(box)).max() <= 2
        assert line.score == pytest.approx(score, abs=0.01)


def test_cli_reads_white_text_on_a_transparent_png(cli, tmp_path):
    path = tmp_path / "white.png"
    lettering((255, 255, 255, 255)).save(path)
    result = cli("infer", "ppocr-v4", str(path))
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [TEXT] and "no text" not in result.stderr


def test_cli_says_when_an_image_has_no_text(cli, tmp_path):
    blank, clear = tmp_path / "blank.png", tmp_path / "clear.png"
    Image.new("RGB", (200, 80), "white").save(blank)
    Image.new("RGBA", (200, 80), (0, 0, 0, 0)).save(clear)
    result = cli("infer", "ppocr-v4", str(blank))
    assert result.exit_code == 0 and result.stdout == ""
    assert " ".join(result.stderr.split()) == f"warning: no text found in {blank}"  # rich may wrap the line
    records = json_lines(cli("infer", "ppocr-v4", str(blank), str(clear), "--json"))
    assert [r["lines"] for r in records] == [[], []]
