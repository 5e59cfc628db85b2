"""The logit lens over image tokens (Neo et al., "Towards Interpreting Visual Information
Processing in Vision-Language Models", ICLR 2025, Sec. 4): each image token's hidden state after
each decoder layer, through the language model's final norm and the unembedding, read as words.

The hidden states are taken from the outputs of the language model's decoder layers (forward
hooks on `model.get_decoder().layers`), before the final norm; `read_out` applies the model's own
final norm (`get_decoder().norm`) and unembedding (`get_output_embeddings()`), then the soft cap
on the logits where the model has one (Gemma 2's `final_logit_softcapping`), so the lens of
the last layer is the model's own next-token logits at that position (tested on every family).
The forward pass runs inside a `vlmflow.session`, so knockouts apply as everywhere else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from vlmflow.attention.knockout import Knockout
from vlmflow.attention.layers import Layers
from vlmflow.errors import VlmflowError
from vlmflow.models.loading import DEFAULT_PROMPT

if TYPE_CHECKING:
    from vlmflow.models.loading import Handle, Prompt


@dataclass(frozen=True)
class Lens:
    """Top-k words of each image token at each measured layer.

    `layers`: measured layer indices (L,); `positions`: the image tokens' prompt positions
    (p,), patches only, tile after tile (`TokenGrid` order) unless chosen; `ids` and `probs`:
    (L, p, k) top-k token ids and their softmax probabilities (float32); `words`: (L, p, k)
    decoded token texts.
    """

    layers: tuple[int, ...]
    positions: tuple[int, ...]
    ids: torch.Tensor  # (L, p, k) long
    probs: torch.Tensor  # (L, p, k) float32
    words: tuple[tuple[tuple[str, ...], ...], ...]  # (L, p, k)


def parts(handle: Handle) -> tuple[Any, Any, Any]:
    """(decoder layers, final norm, unembedding) of the handle's language model.

    Raises VlmflowError when the model does not expose them through `get_decoder()` (with
    `layers` and `norm`) and `get_output_embeddings()`.
    """
    model = handle.model
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    layers = getattr(decoder, "layers", None)
    norm = getattr(decoder, "norm", None)
    if layers is None or norm is None or head is None:
        raise VlmflowError(
            f"the logit lens needs the language model's layers, final norm and unembedding; "
            f"{type(model).__name__} does not expose them through get_decoder().layers/.norm "
            "and get_output_embeddings()"
        )
    return layers, norm, head


def read_out(handle: Handle, hidden: torch.Tensor) -> torch.Tensor:
    """(..., d) hidden states -> (..., V) float32 logits through the final norm and unembedding
    (and the soft cap on the logits where the model has one, `final_logit_softcapping`: Gemma
    2 as the model's own head applies it)."""
    _, norm, head = parts(handle)
    cap = getattr(handle.model.config.get_text_config(), "final_logit_softcapping", None)
    with torch.inference_mode():
        logits = head(norm(hidden))
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits.float()


def hidden_states(
    handle: Handle,
    prompt: Prompt,
    layers: Sequence[int],
    positions: Sequence[int],
    knockout: Knockout | Sequence[Knockout] = (),
) -> torch.Tensor:
    """(L, p, d) outputs of decoder `layers` at prompt `positions` (row 0), before the final
    norm, from one forward pass of the prompt inside a session with `knockout`."""
    import vlmflow

    blocks, _, _ = parts(handle)
    index = torch.tensor(list(positions), dtype=torch.long)
    kept: dict[int, torch.Tensor] = {}

    def hook(layer: int) -> Any:
        def keep(module: Any, args: Any, output: Any) -> None:
            h = output[0] if isinstance(output, tuple) else output  # (b, n, d)
            kept[layer] = h[0, index.to(h.device)].detach().clone()

        return keep

    hooks = [blocks[i].register_forward_hook(hook(i)) for i in layers]
    try:
        with vlmflow.session(handle, prompt, knockout=knockout), torch.inference_mode():
            handle.model(**prompt.inputs, logits_to_keep=1)
    finally:
        for h in hooks:
            h.remove()
    return torch.stack([kept[i] for i in layers])


def lens(
    handle: Handle,
    image: Any,
    prompt: str = DEFAULT_PROMPT,
    *,
    top_k: int = 5,
    layers: str | Layers = "all",
    knockout: Knockout | Sequence[Knockout] = (),
) -> Lens:
    """The logit lens over the image tokens of `image` (Neo et al. ICLR 2025, Sec. 4).

    `top_k`: words kept per token and layer; `layers`: a layer spec (`all`, `from:L`,
    `only:A-B`, `except:A-B`). Cost: one forward pass, then per layer one (p, d) x (d, V)
    product. Raises VlmflowError for `top_k` < 1, a bad layer spec and a model whose layers,
    norm or unembedding cannot be found.
    """
    return lens_prompt(
        handle, handle.prepare(image, prompt), top_k=top_k, layers=layers, knockout=knockout
    )


def lens_prompt(
    handle: Handle,
    prompt: Prompt,
    *,
    top_k: int = 5,
    layers: str | Layers = "all",
    knockout: Knockout | Sequence[Knockout] = (),
    positions: Sequence[int] | None = None,
) -> Lens:
    """`lens` on a prepared one-row prompt; `positions` default: the image's patch tokens."""
    if top_k < 1:
        raise VlmflowError(f"top_k={top_k}: keep at least one word per token")
    if prompt.input_ids.shape[0] != 1:
        raise VlmflowError("the lens reads one prompt: prepare a single image and text")
    chosen = sorted(Layers.parse(layers).resolve(handle.num_layers))
    where = list(positions) if positions is not None else prompt.layout.patch_positions(0)
    if not where and prompt.layout.image_positions(0):
        raise VlmflowError(
            "this model's image has no patch tokens in the prompt (it reads the image through"
            " cross-attention): give the positions to read"
        )
    if not where:
        raise VlmflowError("the prompt has no image tokens to read: prepare it with an image")
    hidden = hidden_states(handle, prompt, chosen, where, knockout)  # (L, p, d)
    ids, probs = [], []
    for h in hidden:
        logits = read_out(handle, h)  # (p, V)
        top = logits.topk(top_k, dim=-1)  # softmax of the top k only: (p, k)
        ids.append(top.indices.cpu())
        probs.append((top.values - logits.logsumexp(dim=-1, keepdim=True)).exp().cpu())
    ids_t = torch.stack(ids)  # (L, p, k)
    tokenizer = getattr(handle.processor, "tokenizer", handle.processor)
    vocab = {int(i): str(tokenizer.decode([int(i)])) for i in ids_t.unique().tolist()}
    words = tuple(
        tuple(tuple(vocab[int(i)] for i in token) for token in layer) for layer in ids_t.tolist()
    )
    return Lens(tuple(chosen), tuple(where), ids_t, torch.stack(probs), words)
