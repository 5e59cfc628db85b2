"""Per-family `TokenRoles` resolvers: which prompt positions are image tokens, and their grid.

Everything else in vlmflow is family-agnostic; a family is one module here (`llava`, `qwen_vl`,
`internvl`, `idefics`, `llava_onevision`, `mistral3`, `gemma3`, `paligemma`, `mllama`, ...)
holding a `TokenRoles` subclass registered with `register`, on the shared interface and registry
(`registry`) and image-grid geometry (`geometry`). A model type no family claims loads through
the generic resolver (`generic`: roles only) when its image token is found.
"""

# isort: off
# The import order is the registration order, which `vlmflow supports ...` lists.
from vlmflow.models.families import llava, qwen_vl, qwen3_vl, internvl, idefics  # noqa: F401
from vlmflow.models.families import llava_onevision, mistral3, gemma3, paligemma  # noqa: F401
from vlmflow.models.families import mllama  # noqa: F401

# isort: on
from vlmflow.models.families.generic import GenericResolverWarning, GenericRoles, generic_for
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
    "GenericResolverWarning",
    "GenericRoles",
    "ImageInput",
    "Role",
    "TokenRoles",
    "generic_for",
    "register",
    "resolver_for",
]
