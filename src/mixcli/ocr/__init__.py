"""PP-OCRv4 text reading (detection, direction, recognition) on Paddle Inference, pre/post-processing in NumPy."""

from .pipeline import OcrLine, OcrPipeline, OcrResult, embedded_model_dir

__all__ = ["OcrLine", "OcrPipeline", "OcrResult", "embedded_model_dir"]
