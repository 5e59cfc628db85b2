"""Saving and loading compressed contexts: one safetensors file, versioned, tied to its model.

The file carries a SHA-256 checksum of its metadata and tensor bytes (metadata `checksum`),
verified on load: flipped bytes in the tensor data would otherwise load and answer garbage.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from vlmflow.errors import VlmflowError

if TYPE_CHECKING:
    from vlmflow.compression.context import CompressedContext
    from vlmflow.models.loading import Handle

FORMAT = "vlmflow-context"
VERSION = 2  # 2: with a checksum


def fingerprint(handle: Handle) -> str:
    """Identity of a model: its config and a sample of its input embedding weights."""
    config = handle.model.config.to_json_string(use_diff=False)
    weights = handle.model.get_input_embeddings().weight
    sample = weights.detach().flatten()[:4096].float().cpu().numpy().tobytes()
    return hashlib.sha256(config.encode() + sample).hexdigest()[:32]


def checksum(meta: dict[str, str], tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 (hex) of the metadata but `checksum` and of every tensor's name, dtype, shape
    and bytes, in name order."""
    digest = hashlib.sha256()
    fields = {k: v for k, v in meta.items() if k != "checksum"}
    digest.update(json.dumps(fields, sort_keys=True).encode("utf-8"))
    for name in sorted(tensors):
        t = tensors[name].contiguous().cpu()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def save_context(context: CompressedContext, path: Any) -> None:
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    for layer, (k, v) in enumerate(zip(context.keys, context.values, strict=True)):
        tensors[f"keys.{layer}"] = k.contiguous().cpu()
        tensors[f"values.{layer}"] = v.contiguous().cpu()
    tensors["next_position"] = context.next_position.cpu()
    meta = {
        "format": FORMAT,
        "version": str(VERSION),
        "model": fingerprint(context.handle),
        "model_name": context.handle.name,
        "k": str(context.k),
        "rank": context.rank,
        "full_tokens": str(context.full_tokens),
        "kept": json.dumps(context.kept),
        "context_text": context.context_text,
        "description": context.description,
    }
    meta["checksum"] = checksum(meta, tensors)
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(target)


def load_context(path: Any, handle: Handle) -> CompressedContext:
    """Load a context written by `CompressedContext.save` (paper Sec. 5), for `handle`.

    Args:
        path: the file (safetensors with vlmflow's metadata).
        handle: the model it was made with; its tensors go to this handle's device.

    Returns:
        The `CompressedContext`, ready to `ask`; it has no ranking, so `pruned` needs a fresh
        `compress`.

    Raises:
        VlmflowError: no such file, an unreadable file, another format version, or a context
            of another model.
    """
    from safetensors import safe_open

    from vlmflow.compression.context import CompressedContext

    file = Path(path)
    if not file.is_file():
        raise VlmflowError(f"no saved context at {file}: create one with context.save(path)")
    try:
        with safe_open(str(file), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    except Exception as err:
        raise VlmflowError(
            f"{file} is not a readable context file ({type(err).__name__}): save it again"
        ) from None
    if meta.get("format") != FORMAT:
        raise VlmflowError(f"{file} is not a vlmflow context: save one with context.save(path)")
    if meta.get("version") != str(VERSION):
        raise VlmflowError(
            f"{file} has context format {meta.get('version')}, this vlmflow reads {VERSION}:"
            " compress the image again"
        )
    if meta.get("checksum") != checksum(meta, tensors):
        raise VlmflowError(
            f"{file} is damaged (its checksum does not match its contents): save the context "
            "again or compress the image again"
        )
    if meta.get("model") != fingerprint(handle):
        raise VlmflowError(
            f"{file} was made with model {meta.get('model_name')!r}, not {handle.name!r}:"
            " load that model or compress the image again"
        )
    try:
        layers = handle.num_layers
        keys = [tensors[f"keys.{i}"].to(handle.device) for i in range(layers)]
        values = [tensors[f"values.{i}"].to(handle.device) for i in range(layers)]
        kept = json.loads(meta["kept"])
        context = CompressedContext(
            handle=handle,
            keys=keys,
            values=values,
            kept=kept,
            next_position=tensors["next_position"],
            full_tokens=int(meta["full_tokens"]),
            k=float(meta["k"]),
            context_text=meta["context_text"],
            description=meta["description"],
            rank=meta.get("rank", "sum"),
        )
    except (KeyError, ValueError) as err:
        raise VlmflowError(f"{file} is incomplete ({err}): compress the image again") from None
    if any(k.shape[2] != len(p) for k, p in zip(keys, kept, strict=True)):
        raise VlmflowError(f"{file} is inconsistent (cache and positions differ): compress again")
    return context
