"""Compare two descriptions object by object (paper Sec. 4.2): TP, FP, FN, precision, recall, F1.

    from vlmflow import judge
    v = judge.compare(original, under_knockout)             # offline backend, cached
    v.tp, v.fn, v.fp, v.f1, v.missing, v.hallucinated
    judge.compare(a, b, backend=judge.LlmJudge(model="gpt-4o"))  # the paper's LLM protocol
    judge.compare(a, b, backend=judge.SceneJudge({"dog": ["puppy"], "car": []}))
    judge.compare_many(pairs, backend="offline")             # Verdict or Failure per pair

Backends (`BACKENDS`, in `vlmflow.judge.backends`): `offline` (WordNet + MiniLM, no network,
the default), `llm` (any OpenAI-compatible endpoint) and `scene` (a closed vocabulary).
Verdicts are cached in SQLite by (backend, model, prompt version, texts); see
`vlmflow.judge.cache`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from vlmflow.judge.backends import BACKENDS, BackendSpec, backend_spec
from vlmflow.judge.cache import JudgeCache
from vlmflow.judge.protocol import Backend, Failure, JudgeReplyError, Match, Verdict

if TYPE_CHECKING:
    from vlmflow.judge.llm import LlmJudge, LlmSettings
    from vlmflow.judge.offline import OfflineJudge
    from vlmflow.judge.scene import SceneJudge, SceneVocabulary

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendSpec",
    "Failure",
    "JudgeCache",
    "JudgeReplyError",
    "LlmJudge",
    "LlmSettings",
    "Match",
    "OfflineJudge",
    "SceneJudge",
    "SceneVocabulary",
    "Verdict",
    "compare",
    "compare_many",
    "get_backend",
    "mentions",
]


_LAZY = {
    "OfflineJudge": "vlmflow.judge.offline",
    "LlmJudge": "vlmflow.judge.llm",
    "LlmSettings": "vlmflow.judge.llm",
    "SceneJudge": "vlmflow.judge.scene",
    "SceneVocabulary": "vlmflow.judge.scene",
}


def __getattr__(name: str) -> Any:
    """Backend classes import on first use (WordNet and MiniLM are heavy)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vlmflow.judge' has no attribute {name!r}")


def get_backend(name: str | Backend = "offline", **options: Any) -> Backend:
    """A backend built by name from `options` (see `BACKENDS`), or the instance given.

    Raises VlmflowError for an unknown name or options the backend cannot start with (the
    `scene` backend without a `vocabulary`, the `llm` backend without an API key).
    """
    if isinstance(name, Backend):
        return name
    return backend_spec(name).build(**options)


def _cache_of(cache: JudgeCache | str | bool | None) -> JudgeCache | None:
    if cache is True:
        return JudgeCache()
    if cache is False or cache is None:
        return None
    if isinstance(cache, JudgeCache):
        return cache
    return JudgeCache(cache)


def compare(
    reference: str,
    candidate: str,
    backend: str | Backend = "offline",
    *,
    cache: JudgeCache | str | bool | None = True,
) -> Verdict:
    """Compare two descriptions object by object (paper Sec. 4.2, Appendix: the LLM judge).

    One verdict; a cached one when this backend, model and prompt judged these texts before.

    Args:
        reference: the ground-truth description (e.g. generated without knockout).
        candidate: the description judged against it (e.g. under a knockout).
        backend: a backend name of `BACKENDS` ("offline", "llm", "scene") or an instance.
        cache: True (the default cache file), a path, a `JudgeCache`, or False/None (none).

    Returns:
        A `Verdict`: the objects of each text, the matches, and TP / FP / FN with precision,
        recall and F1 in [0, 1] (precision: candidate objects found in the reference; recall:
        reference objects found in the candidate).

    Raises:
        JudgeReplyError: the backend answered with something unusable (recorded in the
            cache's failures table, never stored as a verdict).
        VlmflowError: an unknown backend name, or one that cannot start (see `get_backend`).
    """
    judge = get_backend(backend)
    store = _cache_of(cache)
    payload = [reference, candidate]
    ident = (judge.name, judge.model, judge.prompt_version, payload)
    if store is not None:
        hit = store.get("compare", *ident)
        if hit is not None:
            return Verdict.from_dict(hit, cached=True)
    try:
        verdict = judge.compare(reference, candidate)
    except JudgeReplyError as err:
        if store is not None:
            store.record_failure("compare", *ident, error=str(err), raw=err.raw)
        raise
    if store is not None:
        store.put("compare", *ident, verdict.to_dict())
    return verdict


def compare_many(
    pairs: Iterable[tuple[str, str]],
    backend: str | Backend = "offline",
    *,
    cache: JudgeCache | str | bool | None = True,
    workers: int = 1,
) -> list[Verdict | Failure]:
    """Verdicts in input order; a pair whose reply is unusable becomes a `Failure`, never zeros.

    Each verdict is committed to the cache as soon as it is computed, so an interrupted sweep
    resumes where it stopped. `workers` > 1 sends that many requests at once (for the llm
    backend; the offline and scene backends are CPU-bound and gain nothing).
    """
    judge = get_backend(backend)
    store = _cache_of(cache)

    def one(pair: tuple[str, str]) -> Verdict | Failure:
        reference, candidate = pair
        try:
            return compare(reference, candidate, judge, cache=store if store is not None else False)
        except JudgeReplyError as err:
            return Failure(reference, candidate, judge.name, str(err), err.raw)

    if workers <= 1:
        return [one(p) for p in pairs]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, pairs))


def mentions(
    text: str,
    objects: Sequence[str],
    backend: str | Backend = "offline",
    *,
    cache: JudgeCache | str | bool | None = True,
) -> tuple[bool, ...]:
    """For each object name: does `text` mention it (the paper's human-study question)?"""
    judge = get_backend(backend)
    store = _cache_of(cache)
    payload = [text, list(objects)]
    ident = (judge.name, judge.model, judge.prompt_version, payload)
    if store is not None:
        hit = store.get("mentions", *ident)
        if hit is not None:
            return tuple(bool(x) for x in hit["answers"])
    try:
        answers = judge.mentions(text, objects)
    except JudgeReplyError as err:
        if store is not None:
            store.record_failure("mentions", *ident, error=str(err), raw=err.raw)
        raise
    if store is not None:
        store.put("mentions", *ident, {"answers": list(answers)})
    return answers
