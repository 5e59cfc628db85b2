"""`knockout`: the model's description vs. its descriptions under image knockouts (Fig. 2e-f, A4).

Per image: the baseline description (no knockout), then each knockout setting of the paper
(`image-generated`, `image-query`, `image-query+generated`) over every layer (`@all`), from
layer L on for each L of the sweep (`@from:L`, the curve of Fig. 2f) and everywhere except a
window of middle layers (`@except:A-B`, the dashed bars of Fig. 2e). Each knocked-out
description is judged against the baseline object by object (`vlmflow.judge`).

Setting ids: `baseline`, then `{knockout}@{layers}` in the order above, e.g.
`image-query@all`, `image-generated@from:12`, `image-query+generated@except:12-19`.

The baseline is regenerated inside the unit that needs it and memoised per item in the process
(greedy decoding is deterministic), so every setting is a self-contained unit the runner can
resume or retry on its own.

This module also holds the lazily built judge the `topk` and `localization` experiments share
with it; the descriptions they share are in `vlmflow.experiments.description`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from vlmflow.defaults import DEFAULT_MODEL, DEFAULT_PROMPT
from vlmflow.errors import VlmflowError
from vlmflow.experiments.description import (
    Generation,
    describe,
    describe_variants,
    verdict_metrics,
    verdict_payload,
)
from vlmflow.experiments.prompts import check_question, item_prompt
from vlmflow.experiments.protocol import (
    Context,
    ItemMemo,
    Result,
    WorkItem,
    as_tuples,
    image_items,
    parse_config,
    result_config,
)
from vlmflow.experiments.window import middle_window, parse_window
from vlmflow.judge.backends import BACKENDS
from vlmflow.sources import ImageRef, ImageSource

if TYPE_CHECKING:
    from vlmflow.attention.knockout import Knockout
    from vlmflow.judge import Backend, JudgeCache, Verdict
    from vlmflow.models.loading import Handle, Prompt

BASELINE = "baseline"
KNOCKOUTS = ("image-generated", "image-query", "image-query+generated")
SCOPES = ("all", "from", "except")
JUDGES = BACKENDS  # the judge backends by name (vlmflow.judge.backends)


# -- the judge, shared by knockout, topk and localization -----------------------------------


class Judge:
    """The configured judge backend and verdict cache, built on first use (WordNet is heavy)."""

    def __init__(self, backend: str, cache: bool = True) -> None:
        if backend not in JUDGES:
            raise ValueError(f"judge {backend!r} is not one of {', '.join(JUDGES)}")
        self.name = backend
        self.use_cache = cache
        self._backend: Backend | None = None
        self._cache: JudgeCache | None = None

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            spec = BACKENDS[self.name]
            # a closed-vocabulary backend matches the scene world's names and synonyms
            options = {"vocabulary": scene_vocabulary()} if spec.closed_vocabulary else {}
            self._backend = spec.build(**options)
        return self._backend

    def compare(self, reference: str, candidate: str) -> Verdict:
        """A verdict; an unusable reply raises, so the unit is recorded as failed, not as zeros."""
        from vlmflow import judge

        if self.use_cache and self._cache is None:
            self._cache = judge.JudgeCache()
        cache: JudgeCache | bool = self._cache if self._cache is not None else False
        return judge.compare(reference, candidate, self.backend, cache=cache)


def scene_vocabulary() -> Any:
    """The scene world's closed vocabulary (names, synonyms, plurals) as the scene judge uses it."""
    from vlmflow.judge.scene import SceneVocabulary
    from vlmflow.scenes.vocabulary import VOCABULARY

    return SceneVocabulary.from_types(VOCABULARY.values())


def model_depth(model: str) -> int:
    """Number of decoder layers of a checkpoint, read from its config (no weights loaded)."""
    path = model
    if model == DEFAULT_MODEL:
        from vlmflow.default_model import ensure_checkpoint

        path = str(ensure_checkpoint())
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(path)
    except Exception as err:  # missing folder, unknown hub id, no network: one message
        raise VlmflowError(
            f"cannot read the number of layers of {model!r} ({type(err).__name__}): "
            "set num_layers in the experiment's config"
        ) from None
    return int(config.get_text_config().num_hidden_layers)


# -- the knockout sweep ---------------------------------------------------------------------


@dataclass(frozen=True)
class KnockoutConfig:
    """Options of `knockout`.

    `settings`: knockouts to run (of KNOCKOUTS). `scopes`: layer sets per knockout: `all`,
    `from` (one setting per sweep layer) and `except` (all layers but `window`).
    `layers`: the sweep's start layers; default every `step`-th layer from 0.
    `window`: "A-B", the layers the `except` scope leaves open; default the middle quarter.
    `num_layers`: the model's depth, needed to list the default sweep and window before the
    model loads; `bind_model` reads it from the checkpoint's config.
    """

    settings: tuple[str, ...] = KNOCKOUTS
    scopes: tuple[str, ...] = SCOPES
    layers: tuple[int, ...] | None = None
    step: int = 1
    window: str | None = None
    num_layers: int | None = None
    max_new_tokens: int = 64
    prompt: str = DEFAULT_PROMPT
    question: str | None = None  # each image's own question instead (experiments.prompts)
    judge: str = "offline"
    judge_cache: bool = True
    batch: int = 8  # settings generated together (`generate_variants`); 1: one by one

    def __post_init__(self) -> None:
        check_question(self.question)
        if self.batch < 1:
            raise ValueError(f"batch {self.batch} must be at least 1")
        for name in self.settings:
            if name not in KNOCKOUTS:
                raise ValueError(f"knockout {name!r} is not one of {', '.join(KNOCKOUTS)}")
        for scope in self.scopes:
            if scope not in SCOPES:
                raise ValueError(f"scope {scope!r} is not one of {', '.join(SCOPES)}")
        if not self.settings or not self.scopes:
            raise ValueError("name at least one knockout in settings and one scope in scopes")
        if len(set(self.settings)) != len(self.settings) or len(set(self.scopes)) != len(
            self.scopes
        ):
            raise ValueError("settings and scopes must not repeat an entry")
        if self.step < 1:
            raise ValueError(f"step {self.step} must be at least 1")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens {self.max_new_tokens} must be at least 1")
        if self.judge not in JUDGES:
            raise ValueError(f"judge {self.judge!r} is not one of {', '.join(JUDGES)}")
        if self.num_layers is not None and self.num_layers < 1:
            raise ValueError(f"num_layers {self.num_layers} must be at least 1")
        if self.layers is not None:
            if "from" in self.scopes and not self.layers:
                raise ValueError("layers is empty: the from scope needs at least one start layer")
            if any(not isinstance(x, int) or x < 0 for x in self.layers):
                raise ValueError(f"layers {list(self.layers)} must be layer indices >= 0")
            if self.num_layers is not None and max(self.layers, default=0) >= self.num_layers:
                raise ValueError(
                    f"layers {list(self.layers)}: this model has layers 0-{self.num_layers - 1}"
                )
        if self.window is not None:
            a, b = parse_window(self.window)
            if self.num_layers is not None:
                if b >= self.num_layers:
                    raise ValueError(
                        f"window {a}-{b}: this model has layers 0-{self.num_layers - 1}"
                    )
                if "except" in self.scopes and a == 0 and b == self.num_layers - 1:
                    raise ValueError(
                        f"window {a}-{b} covers every layer, so except:{a}-{b} would knock out"
                        " zero layers: leave at least one layer outside the window"
                    )

    def sweep(self) -> list[int]:
        """Start layers of the `from` scope."""
        if self.layers is not None:
            return sorted(set(self.layers))
        return list(range(0, self._depth("the layer sweep"), self.step))

    def window_layers(self) -> tuple[int, int]:
        if self.window is not None:
            return parse_window(self.window)
        a, b = middle_window(self._depth("the default window"))
        if a == 0 and b == self._depth("the default window") - 1:
            raise VlmflowError(
                f"a {b + 1}-layer model has no layer outside its middle window: "
                "drop the except scope"
            )
        return a, b

    def _depth(self, what: str) -> int:
        if self.num_layers is None:
            raise VlmflowError(
                f"knockout lists {what} before loading the model, so it needs the model's depth:"
                " set num_layers in its config (or give layers and window)"
            )
        return self.num_layers


@dataclass(frozen=True)
class KnockoutSetting:
    """A parsed setting id: the knockout name and its layer spec (a `Layers` string)."""

    knockout: str
    scope: str
    spec: str  # "all", "from:L" or "except:A-B"

    @classmethod
    def parse(cls, setting: str) -> KnockoutSetting:
        name, _, spec = setting.partition("@")
        scope = spec.split(":", 1)[0]
        if name not in KNOCKOUTS or scope not in SCOPES:
            raise VlmflowError(f"bad knockout setting {setting!r}: use KNOCKOUT@LAYERS")
        return cls(name, scope, spec)

    @property
    def id(self) -> str:
        return f"{self.knockout}@{self.spec}"


class KnockoutSweep:
    """Baseline, then every configured knockout over its layer sets, judged against it."""

    name = "knockout"
    needs_model = True

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        opts = as_tuples(dict(options or {}), "settings", "scopes", "layers")
        self.options = parse_config(KnockoutConfig, opts, self.name)
        self.config = result_config(self.options)
        self.judge = Judge(self.options.judge, self.options.judge_cache)
        self._memo = ItemMemo()

    def bind_model(self, model: str | int) -> None:
        """Fill in the model's depth (a checkpoint name, or the number itself) before planning."""
        if self.options.num_layers is not None:
            return
        depth = model if isinstance(model, int) else model_depth(model)
        options = {**asdict(self.options), "num_layers": depth}
        self.options = parse_config(KnockoutConfig, options, self.name)
        self.config = result_config(self.options)

    def items(self, source: ImageSource) -> Iterable[WorkItem]:
        return image_items(source)

    def settings(self, item: WorkItem) -> Sequence[str]:
        opts = self.options
        ids = [BASELINE]
        for name in opts.settings:
            for scope in opts.scopes:
                if scope == "all":
                    ids.append(f"{name}@all")
                elif scope == "from":
                    ids.extend(f"{name}@from:{layer}" for layer in opts.sweep())
                else:
                    a, b = opts.window_layers()
                    ids.append(f"{name}@except:{a}-{b}")
        return ids

    def run(self, handle: Any, item: WorkItem, setting: str, context: Context) -> Result:
        depth = self.options.num_layers
        if depth is not None and depth != handle.num_layers:
            raise VlmflowError(
                f"the config says num_layers={depth} but {handle.name} has {handle.num_layers}"
                " layers: fix num_layers (it decides the sweep)"
            )
        self._generate_pending(handle, item, context.pending or (setting,))
        baseline = self._baseline(handle, item)
        if setting == BASELINE:
            verdict = self.judge.compare(baseline.text, baseline.text)
            return Result(
                metrics={**verdict_metrics(verdict), "objects": len(verdict.reference_objects)},
                payload={
                    "description": baseline.text,
                    "ids": list(baseline.ids),
                    "objects": list(verdict.reference_objects),
                    "judge": f"{verdict.backend}:{verdict.model}",
                },
            )
        parsed = KnockoutSetting.parse(setting)
        knockout, layers = resolve_knockout(parsed.knockout, parsed.spec, handle.num_layers)
        generation = self._memo.get(
            handle,
            item,
            ("knockout", parsed.knockout, layers),  # from:0 and all share one generation
            lambda: describe(
                handle, self._prompt(handle, item), self.options.max_new_tokens, [knockout]
            )[0],
        )
        verdict = self.judge.compare(baseline.text, generation.text)
        start = int(parsed.spec.split(":")[1]) if parsed.scope == "from" else None
        return Result(
            metrics={
                **verdict_metrics(verdict),
                "knockout": parsed.knockout,
                "scope": parsed.scope,
                "start": start,
                "blocked_layers": len(layers),
            },
            payload={
                "description": generation.text,
                "ids": list(generation.ids),
                "knockout": str(knockout),
                "layers": sorted(layers),
                **verdict_payload(verdict),
            },
        )

    def _generate_pending(self, handle: Handle, item: WorkItem, pending: Sequence[str]) -> None:
        """Generate the baseline and the pending settings' descriptions not yet in memory, in
        batches of `batch` (a failing batch fails this unit; the next unit tries again)."""
        keys: list[Any] = []
        variants: list[list[Knockout]] = []
        if not self._memo.has(handle, item, BASELINE):
            keys.append(BASELINE)
            variants.append([])
        for setting in pending:
            if setting == BASELINE:
                continue
            parsed = KnockoutSetting.parse(setting)
            knockout, layers = resolve_knockout(parsed.knockout, parsed.spec, handle.num_layers)
            key = ("knockout", parsed.knockout, layers)
            if key not in keys and not self._memo.has(handle, item, key):
                keys.append(key)
                variants.append([knockout])
        if len(variants) < 2 or self.options.batch < 2:
            return  # nothing to share: the unit generates its own description
        prompt = self._prompt(handle, item)
        generations = describe_variants(
            handle, prompt, self.options.max_new_tokens, variants, self.options.batch
        )
        for key, generation in zip(keys, generations, strict=True):
            self._memo.put(handle, item, key, generation)

    def _prompt(self, handle: Handle, item: WorkItem) -> Prompt:
        ref: ImageRef = item.payload["image"]
        return self._memo.get(
            handle,
            item,
            "prompt",
            lambda: handle.prepare(
                ref.open(), item_prompt(self.options.prompt, self.options.question, ref)
            ),
        )

    def _baseline(self, handle: Handle, item: WorkItem) -> Generation:
        return self._memo.get(
            handle,
            item,
            BASELINE,
            lambda: describe(handle, self._prompt(handle, item), self.options.max_new_tokens)[0],
        )


def resolve_knockout(name: str, spec: str, num_layers: int) -> tuple[Knockout, frozenset[int]]:
    """The knockout of a setting and its layers on this model; zero layers is refused (by
    `Layers.resolve`)."""
    from vlmflow.attention.knockout import Knockout

    knockout = Knockout.parse(name, spec)
    return knockout, knockout.layers.resolve(num_layers)
