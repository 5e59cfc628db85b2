"""vlmflow: see and cut how a vision-language model uses the image.

Public API (imported lazily so `import vlmflow` stays cheap and torch-free):
    load, Handle, Prompt                      models: load a VLM, token roles of a prompt
    session, Session, Knockout, Layers        attention knockout (paper Sec. 4, Eq. 3-4)
    Capture, CaptureResult, Role              attention capture (paper Sec. 3-4)
    generate_variants                         several knockouts in one batched generate
    compress, load_context, CompressedContext image re-prompting (paper Sec. 5)
    compare                                   judge two descriptions object by object (Sec. 4.2)
    Runner                                    run experiments over images into a result store
    build_report                              the HTML report of a result store
    trace, Trace, lens, Lens                  beyond the paper: answer tracing, the logit lens
    VlmflowError                              every user-facing error

The subpackages keep their own names (`vlmflow.compression`, `vlmflow.judge`,
`vlmflow.report`, ...); a top-level name above is always the function or class.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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
    "compress": "vlmflow.compression",
    "load_context": "vlmflow.compression",
    "CompressedContext": "vlmflow.compression",
    "compare": "vlmflow.judge",
    "Runner": "vlmflow.experiments.runner",
    "build_report": "vlmflow.report.build",
    # beyond the paper (vlmflow.analysis)
    "trace": "vlmflow.analysis.trace",
    "Trace": "vlmflow.analysis.trace",
    "lens": "vlmflow.analysis.lens",
    "Lens": "vlmflow.analysis.lens",
}

if TYPE_CHECKING:  # the same names, seen by mypy and IDEs with their real types
    from vlmflow.analysis.lens import Lens, lens
    from vlmflow.analysis.trace import Trace, trace
    from vlmflow.attention.batch import generate_variants
    from vlmflow.attention.capture import Capture, CaptureResult
    from vlmflow.attention.knockout import Knockout
    from vlmflow.attention.layers import Layers
    from vlmflow.attention.session import Session, session
    from vlmflow.compression import CompressedContext, compress, load_context
    from vlmflow.errors import VlmflowError
    from vlmflow.experiments.runner import Runner
    from vlmflow.judge import compare
    from vlmflow.models.loading import Handle, Prompt, load
    from vlmflow.report.build import build_report
    from vlmflow.roles import Role

__all__ = [  # the keys of _EXPORTS (tests/test_public_api.py checks they agree)
    "Capture",
    "CaptureResult",
    "CompressedContext",
    "Handle",
    "Knockout",
    "Layers",
    "Lens",
    "Prompt",
    "Role",
    "Runner",
    "Session",
    "Trace",
    "VlmflowError",
    "build_report",
    "compare",
    "compress",
    "generate_variants",
    "lens",
    "load",
    "load_context",
    "session",
    "trace",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # later lookups, and `vlmflow.compress` after submodule imports
        return value
    raise AttributeError(f"module 'vlmflow' has no attribute {name!r}")
