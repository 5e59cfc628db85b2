"""The only weights vlmflow ships for the default model: projector and LoRA factors (a few MB).

File `weights/vlmflow-tiny.safetensors` holds
- `multi_modal_projector.linear_{1,2}.{weight,bias}`: llava's projector, ready to load;
- optionally `lora.<module>.A` `(r, in)` and `lora.<module>.B` `(out, r)` (float32 or float16)
  for modules of the language model such as `layers.3.self_attn.q_proj`; merged in float32 as
  `W += scale * B @ A`,
  with `scale` in the file's metadata.
Its sha256 is written next to it (`vlmflow-tiny.json`, a file type the package ships) by the
training script, and checked before use.
Without the file, the projector is a seeded random initialisation (version `untrained`), so
everything downstream works before training has finished.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vlmflow.default_model.sources import sha256_file
from vlmflow.errors import VlmflowError

WEIGHTS_DIR = Path(__file__).parent / "weights"
WEIGHTS_FILE = WEIGHTS_DIR / "vlmflow-tiny.safetensors"
FORMAT = "vlmflow-tiny-weights/1"
UNTRAINED = "untrained"
INIT_SEED = 0


@dataclass(frozen=True)
class TrainedWeights:
    """Projector tensors, LoRA factors keyed by language-model module, and where they came from."""

    projector: dict[str, torch.Tensor]  # multi_modal_projector.* -> tensor
    lora: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # (A, B)
    lora_scale: float = 1.0
    version: str = UNTRAINED
    sha256: str = ""
    metadata: dict[str, str] = field(default_factory=dict)


def initial_projector(
    vision_dim: int, text_dim: int, seed: int = INIT_SEED
) -> dict[str, torch.Tensor]:
    """PyTorch's default `nn.Linear` initialisation under a fixed seed: deterministic everywhere."""
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for name, fan_in, fan_out in (
        ("linear_1", vision_dim, text_dim),
        ("linear_2", text_dim, text_dim),
    ):
        bound = fan_in**-0.5
        weight = (torch.rand(fan_out, fan_in, generator=generator) * 2 - 1) * bound
        bias = (torch.rand(fan_out, generator=generator) * 2 - 1) * bound
        tensors[f"multi_modal_projector.{name}.weight"] = weight
        tensors[f"multi_modal_projector.{name}.bias"] = bias
    return tensors


def save_weights(
    path: Path,
    projector: dict[str, torch.Tensor],
    lora: dict[str, tuple[torch.Tensor, torch.Tensor]],
    lora_scale: float,
    metadata: dict[str, str],
    lora_dtype: torch.dtype = torch.float32,
) -> str:
    """Write the file and its checksum record (`<stem>.json`); return the sha256.

    `lora_dtype` float16 halves the LoRA factors' share of the file; they are merged in float32.
    """
    from safetensors.torch import save_file

    tensors = {k: v.detach().to(torch.float32).contiguous() for k, v in projector.items()}
    for module, (a, b) in lora.items():
        tensors[f"lora.{module}.A"] = a.detach().to(lora_dtype).contiguous()
        tensors[f"lora.{module}.B"] = b.detach().to(lora_dtype).contiguous()
    meta = {**metadata, "format": FORMAT, "lora_scale": repr(float(lora_scale))}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)
    digest = sha256_file(path)
    record = {"file": path.name, "sha256": digest, "metadata": meta}
    checksum_record(path).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return digest


def checksum_record(path: Path) -> Path:
    return path.with_suffix(".json")


def _recorded_sha256(path: Path) -> str | None:
    try:
        value = json.loads(checksum_record(path).read_text())["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return str(value)


def load_weights(
    path: Path = WEIGHTS_FILE, *, vision_dim: int = 384, text_dim: int = 576
) -> TrainedWeights:
    """The shipped weights after a checksum check, or the seeded initial projector."""
    if not path.is_file():
        return TrainedWeights(projector=initial_projector(vision_dim, text_dim))
    from safetensors import safe_open

    digest = sha256_file(path)
    if _recorded_sha256(path) != digest:
        raise VlmflowError(
            f"{path} does not match its checksum file: reinstall vlmflow or re-run "
            "scripts/train_default.py"
        )
    projector: dict[str, torch.Tensor] = {}
    factors: dict[str, dict[str, torch.Tensor]] = {}
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata() or {})
        for key in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
            tensor = handle.get_tensor(key)
            if key.startswith("lora."):
                module, part = key.removeprefix("lora.").rsplit(".", 1)
                factors.setdefault(module, {})[part] = tensor
            else:
                projector[key] = tensor
    if metadata.get("format") != FORMAT:
        raise VlmflowError(f"{path} has format {metadata.get('format')!r}, expected {FORMAT}")
    lora = {m: (f["A"], f["B"]) for m, f in sorted(factors.items())}
    return TrainedWeights(
        projector=projector,
        lora=lora,
        lora_scale=float(metadata.get("lora_scale", "1.0")),
        version=f"1-{digest[:10]}",
        sha256=digest,
        metadata=metadata,
    )
