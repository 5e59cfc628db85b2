"""vlmflow: see and cut how a vision-language model uses the image.

Public API (imported lazily so `import vlmflow` stays cheap):
    load, Handle, Prompt, session, Session, Knockout, Layers, Capture, CaptureResult, Role,
    compress, load_context, CompressedContext,
    trace, Trace, lens, Lens (beyond the paper: answer tracing, the logit lens)
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "load": "vlmflow.models.loading",
    "Handle": "vlmflow.models.loading",
    "Prompt": "vlmflow.models.loading",
    "session": "vlmflow.attention.session",
    "Session": "vlmflow.attention.session",
    "Knockout": "vlmflow.attention.knockout",
    "Layers": "vlmflow.attention.layers",
    "Capture": "vlmflow.attention.capture",
    "CaptureResult": "vlmflow.attention.capture",
    "Role": "vlmflow.roles",
    "VlmflowError": "vlmflow.errors",
    "generate_variants": "vlmflow.attention.batch",
    "compress": "vlmflow.compress",
    "load_context": "vlmflow.compress",
    "CompressedContext": "vlmflow.compress",
    # beyond the paper (vlmflow.analysis)
    "trace": "vlmflow.analysis.trace",
    "Trace": "vlmflow.analysis.trace",
    "lens": "vlmflow.analysis.lens",
    "Lens": "vlmflow.analysis.lens",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'vlmflow' has no attribute {name!r}")
