"""Image re-prompting from a compressed visual context (paper Sec. 5)."""

from vlmflow.compression.context import Answer, CompressedContext, compress
from vlmflow.compression.storage import load_context

__all__ = ["Answer", "CompressedContext", "compress", "load_context"]
