"""The defaults every entry point shares: the model and the prompt.

Torch-free (importing it imports nothing else), so the command line's argument defaults, the
experiments' config dataclasses and the model loader all read the same two values from here.
"""

from __future__ import annotations

DEFAULT_MODEL = "vlmflow-tiny"
"""The embedded default VLM (`vlmflow.default_model`): what `vlmflow.load()` and every
command's `--model` load when given no other checkpoint."""

DEFAULT_PROMPT = "Describe the image."
"""The instruction after the image when none is given (paper Sec. 4: the models describe the
image). It is also the instruction whose reference answer is a scene's `Scene.description`, so
descriptions judged against the scene world are answers to this prompt."""
