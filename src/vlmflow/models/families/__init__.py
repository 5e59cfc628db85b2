"""Per-family `TokenRoles` resolvers: which prompt positions are image tokens, and their grid.

Everything else in vlmflow is family-agnostic; a family is one module here (`llava`, `qwen_vl`,
`internvl`, `idefics`, `mllama`) holding a `TokenRoles` subclass registered with `register`, on
the shared interface and registry (`registry`) and image-grid geometry (`geometry`).
"""

# isort: off
# The import order is the registration order, which `vlmflow supports ...` lists.
from vlmflow.models.families import llava, qwen_vl, internvl, idefics, mllama  # noqa: F401

# isort: on
from vlmflow.models.families.registry import (
    ImageInput,
    TokenRoles,
    register,
    registered,
    resolver_for,
    supported_model_types,
)
from vlmflow.roles import Role

RESOLVERS = registered()
SUPPORTED_MODEL_TYPES = supported_model_types()

__all__ = [
    "RESOLVERS",
    "SUPPORTED_MODEL_TYPES",
    "ImageInput",
    "Role",
    "TokenRoles",
    "register",
    "resolver_for",
]
