"""DataCopilot: streaming validation, conversion, filtering, deduplication and statistics of multimodal data."""

from .dataset import MMDataset
from .ops import convert_file
from .schema import SCHEMAS, convert, detect, from_canonical, to_canonical

__all__ = ["MMDataset", "SCHEMAS", "convert", "convert_file", "detect", "from_canonical", "to_canonical"]
