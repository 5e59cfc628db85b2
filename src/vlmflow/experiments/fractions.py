"""`fractions`: per layer, how generated tokens split their attention over the token roles.

Paper Fig. 1 / A5: for each image, the share of attention (heads averaged) that the generated
tokens give to image, query and previously generated tokens, per layer; the figure shows the
distribution of these per-image values over images as box plots. The prefix (BOS, system
prompt, "USER:") is kept as a fourth role so the shares sum to 1 without hiding it.

This module also holds what every capture experiment (`fractions`, `histogram`, `maps`) shares:
describing one image greedily under capture, and which capture steps count as generated tokens.

Generated queries: capture step 0 is the prefill's last prompt position (a query position that
predicts generated token 0), so only steps >= 1, whose queries are generated tokens 0..n-2, are
averaged. A description of n tokens gives n - 1 such rows; one that ends after its first token
gives none and is recorded as a failure of that image.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from vlmflow.attention.layers import Layers
from vlmflow.defaults import DEFAULT_PROMPT
from vlmflow.errors import VlmflowError
from vlmflow.experiments.protocol import Context, Result, WorkItem, parse_config
from vlmflow.roles import ROLE_NAMES
from vlmflow.sources import ImageRef, ImageSource

if TYPE_CHECKING:
    import torch

    from vlmflow.attention.capture import Capture, CaptureResult
    from vlmflow.models.layout import ImageSpan, PromptLayout

SETTING = "describe"  # the one setting of every capture experiment
DIGITS = 6  # shares are stored rounded: enough for plots, compact in JSON


@dataclass(frozen=True)
class DescribeConfig:
    """Options shared by the capture experiments.

    `prompt`: the instruction sent with each image; `max_new_tokens`: length cap of the greedy
    description (>= 2, so at least one generated token is a query); `layers`: layer spec of
    the layers measured (`all`, `from:L`, `only:A-B`, `except:A-B`).
    """

    prompt: str = DEFAULT_PROMPT
    max_new_tokens: int = 64
    layers: str = "all"

    def __post_init__(self) -> None:
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 2:
            raise ValueError(f"max_new_tokens must be an integer >= 2, got {self.max_new_tokens!r}")


@dataclass(frozen=True)
class Described:
    """One image described greedily under capture (batch of one prompt)."""

    text: str
    ids: tuple[int, ...]  # the generated token ids
    layout: PromptLayout
    capture: CaptureResult

    @property
    def generated_tokens(self) -> int:
        return len(self.ids)

    @property
    def span(self) -> ImageSpan:
        return self.layout.images[0][0]

    @property
    def queries(self) -> int:
        """Number of generated-token query rows (capture steps >= 1)."""
        return self.capture.num_steps - 1

    @property
    def image_tokens(self) -> int:
        return len(self.positions)

    @property
    def positions(self) -> list[int]:
        """(n_image,) what `generated_rows` columns are: the image's prompt positions, or for an
        image read through cross-attention (`ImageSpan.states`) the indices of its vision
        states among the cross-attention keys (CLS states included, padding tiles not)."""
        if self.span.states:
            return list(self.span.state_keys)
        return [int(p) for p in self.capture.image_positions[0].tolist()]

    def generated_rows(self, layer: int) -> torch.Tensor:
        """(queries, n_image) float64: attention over the image (`positions`), per generated
        query: image rows, or tile rows at a cross-attention layer."""
        if self.span.states:
            keys = list(self.span.state_keys)
            return self.capture.tile_rows[layer][1:, 0, keys].double()
        return self.capture.image_rows[layer][1:, 0, :].double()


def image_items(source: ImageSource) -> list[WorkItem]:
    """One work item per image, keyed by the source's image id."""
    return [WorkItem(ref.id, {"image": ref}) for ref in source.images()]


def describe(handle: Any, item: WorkItem, options: DescribeConfig, capture: Capture) -> Described:
    """Open the item's image (a corrupt file raises), describe it greedily under `capture`."""
    import vlmflow

    ref: ImageRef = item.payload["image"]
    image = ref.open()
    prompt = handle.prepare(image, options.prompt)
    with vlmflow.session(handle, prompt, capture=capture) as s:
        ids = s.generate(max_new_tokens=options.max_new_tokens)  # (1, n)
    result = s.capture
    if result.num_steps < 2:
        raise VlmflowError(
            f"{item.item_id}: the description ended after its first token, so no generated "
            "token attended to anything: nothing to measure for this image"
        )
    generated = tuple(int(i) for i in ids[0].tolist())
    return Described(handle.decode(ids)[0], generated, prompt.layout, result)


def measured_layers(options: DescribeConfig, handle: Any) -> list[int]:
    return sorted(Layers.parse(options.layers).resolve(handle.num_layers))


def rounded(values: Iterable[float]) -> list[float]:
    return [round(float(v), DIGITS) for v in values]


@dataclass(frozen=True)
class FractionsConfig(DescribeConfig):
    """`per_step`: also store every generated query's shares as a blob (`steps`)."""

    per_step: bool = False


class DescribeExperiment:
    """Shared shape of the capture experiments: one item per image, one `describe` setting,
    options parsed into the subclass's `config_type`."""

    name: ClassVar[str]
    config_type: ClassVar[type[DescribeConfig]]
    needs_model = True

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        self.options: Any = parse_config(self.config_type, options, self.name)
        self.config = asdict(self.options)

    def items(self, source: ImageSource) -> Iterable[WorkItem]:
        return image_items(source)

    def settings(self, item: WorkItem) -> Sequence[str]:
        return [SETTING]

    def describe_image_rows(self, handle: Any, item: WorkItem) -> tuple[Described, list[int]]:
        """Describe the item keeping the image rows (float32) of the measured layers."""
        from vlmflow.attention.capture import Capture

        layers = measured_layers(self.options, handle)
        cross = handle.roles.cross_attention_layers()
        if not cross:
            capture = Capture.of(fractions=False, image_layers=self.options.layers, dtype="float32")
            return describe(handle, item, self.options, capture), layers
        # the image is read through cross-attention only: its rows are the tile rows there
        layers = [layer for layer in layers if layer in cross]
        if not layers:
            raise VlmflowError(
                f"layers {self.options.layers!r} hold no cross-attention layer, the only layers"
                f" that read this model's image: choose among {sorted(cross)}"
            )
        capture = Capture.of(fractions=False, tile_layers=self.options.layers, dtype="float32")
        return describe(handle, item, self.options, capture), layers


class Fractions(DescribeExperiment):
    """Per layer, the shares of attention to prefix / image / query / generated tokens.

    Result, for one image:
      metrics  `prefix_share`, `image_share`, `query_share`, `generated_share` (means over the
               measured layers), `generated_tokens`, `image_tokens`.
      payload  `roles`: ["prefix", "image", "query", "generated"]; `layers`: measured layer
               indices; `shares`: per measured layer, the 4 role shares averaged over the
               generated queries (each row sums to 1); `first`: the same for step 0 (the last
               prompt position, which predicts the first generated token); `queries`: number
               of generated queries averaged; `counts`: prompt positions per role; `text`.
      blobs    `steps` (only with `per_step`): (queries, layers, 4) float16, per query.
    """

    name = "fractions"
    config_type = FractionsConfig

    def run(self, handle: Any, item: WorkItem, setting: str, context: Context) -> Result:
        from vlmflow.attention.capture import Capture

        layers = measured_layers(self.options, handle)
        described = describe(handle, item, self.options, Capture.of(layers=self.options.layers))
        steps = described.capture.fractions[:, layers, 0, :].double()  # (steps, L, 4)
        shares = steps[1:].mean(dim=0)  # (L, 4): averaged over generated queries
        mean = shares.mean(dim=0)  # (4,): averaged over layers
        blobs = {}
        if self.options.per_step:
            blobs["steps"] = steps[1:].numpy().astype("float16")
        counts = described.layout.counts()
        return Result(
            metrics={
                **{
                    f"{role}_share": round(float(mean[i]), DIGITS)
                    for i, role in enumerate(ROLE_NAMES)
                },
                "generated_tokens": described.generated_tokens,
                "image_tokens": described.image_tokens,
            },
            payload={
                "roles": list(ROLE_NAMES),
                "layers": layers,
                "shares": [rounded(row) for row in shares.tolist()],
                "first": [rounded(row) for row in steps[0].tolist()],
                "queries": described.queries,
                "counts": {role: counts[role] for role in ROLE_NAMES[:3]},
                "text": described.text,
            },
            blobs=blobs,
        )
