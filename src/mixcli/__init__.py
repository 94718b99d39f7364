"""mix: one command-line suite for PaddlePaddle's multimodal models."""

__version__ = "0.1.0"
