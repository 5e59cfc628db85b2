"""The one attention function vlmflow registers with transformers, for every model family.

Models load with `attn_implementation={"text_config": "vlmflow", ...}`; every decoder layer of the
language model then calls `attention()` below. Outside a session, or at layers and steps a session
does not touch, it calls transformers' own SDPA function untouched, so results stay bit-identical.

Which session applies to a call (`current`):
- a context that entered sessions (the `with` block, and threads run with
  `contextvars.copy_context().run` from it) uses the innermost open one on the module's model,
  or none;
- a context that entered none (a new `threading.Thread`, e.g. transformers' streaming recipe)
  uses the session open on the module's model, whichever thread opened it; sessions on that
  model open in two or more threads make it ambiguous: VlmflowError;
- a session that ended while a thread still continues a generation it began there, or that a
  copied context still holds: VlmflowError (never a silent switch to plain attention).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from vlmflow.attention import guard
from vlmflow.attention.knockout import Split, blocked
from vlmflow.errors import VlmflowError
from vlmflow.roles import Role

if TYPE_CHECKING:
    from vlmflow.attention.session import Session

NAME = "vlmflow"
# compute knockouts without a dense (b, 1, q, kv) mask where the roles' spans allow it
# (`Session.split`); False: always the dense masked pass (the exact reference for tests)
SPLIT = True

# sessions entered in this context, innermost last; None: this context entered none (a new
# thread), () : explicitly none (plain attention whatever is open elsewhere)
ACTIVE: ContextVar[tuple[Session, ...] | None] = ContextVar("vlmflow_session", default=None)

_OPEN: dict[int, list[Session]] = {}  # id of a model or its module -> open sessions on it
_LOCK = threading.Lock()
_FOLLOWED = threading.local()  # .session: the session a thread without its own last ran under


@contextmanager
def entered(session: Session) -> Iterator[None]:
    """Open `session` for this context and for threads without a session of their own."""
    scope = ACTIVE.get() or ()
    token = ACTIVE.set((*scope, session))
    session.owner = threading.current_thread()
    session.is_open = True
    with _LOCK:
        for key in session.modules:
            _OPEN.setdefault(key, []).append(session)
    model = session.handle.model
    hook = model.register_forward_pre_hook(partial(_check_inputs, session), with_kwargs=True)
    ended = model.register_forward_hook(lambda *_: session.begin_pass(None))
    try:
        yield
    finally:
        hook.remove()
        ended.remove()
        session.is_open = False
        with _LOCK:
            for key in session.modules:
                sessions = _OPEN.get(key, [])
                if session in sessions:
                    sessions.remove(session)
                if not sessions:
                    _OPEN.pop(key, None)
        ACTIVE.reset(token)


def current(module: torch.nn.Module, q_len: int, kv_len: int) -> Session | None:
    """The session that applies to `module` (attention module or model) in this thread, for a
    pass over positions [kv_len - q_len, kv_len); None: plain attention. Rules: module docstring.
    """
    scope = ACTIVE.get()
    if scope is not None:
        session = next((s for s in reversed(scope) if s.owns(module)), None)
        if session is not None and not session.is_open:
            session.refuse(
                "this copied context holds a session that has ended: run the work inside the"
                " with block (join threads before leaving it)"
            )
        return session
    followed: Session | None = getattr(_FOLLOWED, "session", None)
    if followed is not None and followed.owns(module):
        if followed.is_open:
            return followed
        _FOLLOWED.session = None
        if q_len < kv_len or kv_len > followed.prompt_length:
            followed.refuse(
                "the session ended while a thread still ran generate() under it: join the"
                " thread before leaving the with block"
            )
    if not _OPEN.get(id(module)):
        return None
    with _LOCK:
        sessions = list(_OPEN.get(id(module), ()))
    if not sessions:
        return None
    owners = {s.owner for s in sessions}
    if len(owners) > 1:
        names = ", ".join(sorted(t.name for t in owners if t is not None))
        raise VlmflowError(
            f"sessions on this model are open in threads {names} and this thread has none of"
            " its own: run it with contextvars.copy_context().run from inside one, or open a"
            " session in this thread"
        )
    _FOLLOWED.session = session = sessions[-1]  # the innermost of that thread's sessions
    return session


def _check_inputs(
    session: Session, model: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    """Forward pre-hook on the session's model: when the session applies to this pass, refuse
    token ids that are not its prompt's and note the positions the pass computes (what places
    the keys of sliding-window layers); a pass from position 0 starts a new run, so the capture
    keeps only the latest run (a second `s.generate()` never mixes its steps with the first's)."""
    session.begin_pass(None)
    ids = kwargs.get("input_ids", args[0] if args else None)
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2:
        return
    cache = kwargs.get("past_key_values")
    past = int(cache.get_seq_length()) if cache is not None else 0
    if current(model, int(ids.shape[1]), past + int(ids.shape[1])) is session:
        if getattr(cache, "is_compileable", False):
            # its keys are preallocated slots: key j is no position, and the step count
            # (keys - prompt) stays fixed; roles and captured steps would be silently wrong
            session.refuse(
                "a static KV cache (cache_implementation='static' or a StaticCache) cannot be"
                " mapped to prompt positions: generate with the default dynamic cache"
            )
        session.check_inputs(ids, past)
        session.begin_pass(past + int(ids.shape[1]), int(ids.shape[1]))
        if past == 0 and session.recorder is not None:
            session.recorder.clear()


def _causal(q: int, kv: int, device: torch.device) -> torch.Tensor:
    """(1, 1, q, kv) bool: query i (absolute position kv - q + i) sees keys up to itself."""
    rows = torch.arange(kv - q, kv, device=device)[:, None]
    return (torch.arange(kv, device=device)[None, :] <= rows)[None, None]


def _implied(module: torch.nn.Module, q: int, kv: int, device: torch.device) -> torch.Tensor:
    """(1, 1, q, kv) bool: what SDPA does when transformers passes no mask: causal for a causal
    module, every key for a module that is not causal (PaliGemma's prefix-LM layers, whose mask
    is passed whenever it is not all keys)."""
    if getattr(module, "is_causal", True):
        return _causal(q, kv, device)
    return torch.ones(1, 1, q, kv, dtype=torch.bool, device=device)


def _kernel(
    module: torch.nn.Module,
    query: torch.Tensor,  # (b, h, q, d)
    key: torch.Tensor,  # (b, h_kv, kv, d)
    value: torch.Tensor,  # (b, h_kv, kv, d)
    mask: torch.Tensor | None,  # (b | 1, 1, q, kv) bool, or None
    scaling: float | None,
    dropout: float,
    kwargs: dict[str, Any],
) -> torch.Tensor:  # (b, q, h, d)
    """The attention the layer asked for under `mask`: soft-capped scores when it passes
    `softcap` (`softcapped_attention`), else transformers' SDPA function untouched."""
    if kwargs.get("softcap") is not None:
        qkv = (query, key, value)
        return softcapped_attention(module, qkv, mask, scaling, dropout, float(kwargs["softcap"]))
    out, _ = sdpa_attention_forward(
        module, query, key, value, mask, scaling=scaling, dropout=dropout, **kwargs
    )
    return out


def attention(
    module: torch.nn.Module,
    query: torch.Tensor,  # (b, h, q, d)
    key: torch.Tensor,  # (b, h_kv, kv, d)
    value: torch.Tensor,  # (b, h_kv, kv, d)
    attention_mask: torch.Tensor | None,  # (b, 1, q, kv) bool, or None for plain causal
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:  # (b, q, h, d), None
    """transformers' attention interface, registered as "vlmflow": SDPA plus knockout and capture.

    Called by every decoder layer of a model loaded with `attn="sdpa"` (`vlmflow.load`), for
    the prefill (q = n prompt positions) and each decode step (q = 1), with `key`/`value`
    holding every cached position (kv >= q). Without an open session that touches
    `module.layer_idx` it is exactly `sdpa_attention_forward` (bit-identical outputs).

    Inside a session: keys whose role is knocked out for a query's role at this layer are
    removed from that query's mask on top of the causal and padding mask (paper Sec. 4.1,
    Eq. 3-4: the attention weight becomes exactly 0 and the rest renormalise). Where every
    batch row has the same roles and no padding (`Session.split`), no (b, 1, q, kv) mask is
    built: the rows run plain causal SDPA and the knocked rows run again over their kept keys
    only (gathered), so SDPA keeps its causal fast path; elsewhere the dense mask is the exact
    fallback (padding, knockouts of some batch rows only). For a
    captured step the last query row's softmax weights (b, h, kv) float32, recomputed without
    repeating key-value heads, go to the session's recorder (reduced there to role fractions
    and image rows, paper Sec. 4.3-4.5).

    At a cross-attention layer (`TokenRoles.cross_attention_layers`: queries are text
    positions, keys the image's vision states, every key of role image) a knockout of image
    keys sets the output rows of its target queries to 0 and leaves the others as the model
    computes them (`_cross_attention`).

    Args:
        module: the layer's attention module (its `layer_idx` picks the knockout layers).
        query: (b, h, q, d); key, value: (b, h_kv, kv, d), h a multiple of h_kv.
        attention_mask: (b, 1, q, kv) bool (True: may attend), or None for plain causal.
        scaling: softmax scale (d**-0.5 when None); dropout: as transformers passes it.

    Returns:
        (output (b, q, h, d), None): attention weights are never returned, as with SDPA.

    Sliding-window layers (`sliding_window` in kwargs or on the module): once the cache has
    dropped positions the keys are the last window - 1 positions plus the new ones, so key j
    is absolute position end - kv + j (`Session.key_end`); roles are read there, the mask
    transformers passed (window, padding, Gemma 3's bidirectional image blocks) is kept and
    only knocked keys are removed from it, and captured weights are laid over absolute
    positions (0 outside the window). Once their cache has dropped positions those layers take
    the dense path.

    Raises:
        VlmflowError: a layer the session cannot handle exactly (chunked or sink attention:
            `guard.unsupported`), a static KV cache, a sliding-window call whose key positions
            are unknown or whose knockout leaves a query no key, or capture over a batch that
            is not one row per prompt row (num_beams or num_return_sequences > 1).
    """
    q_len, kv_len = query.shape[2], key.shape[2]
    guard.record(module, kwargs, q_len, kv_len)
    session = current(module, q_len, kv_len)
    layer = getattr(module, "layer_idx", None)
    if session is None or layer is None or not session.touches(layer):
        return _kernel(module, query, key, value, attention_mask, scaling, dropout, kwargs), None
    session.check_layer(module, kwargs)
    expand = session.expansion(query.shape[0])  # rows per prompt row (beams, sequences)
    session.check_capture_rows(query.shape[0])
    if layer in session.cross:
        out = _cross_attention(
            session,
            module,
            layer,
            expand,
            query,
            key,
            value,
            attention_mask,
            scaling,
            dropout,
            kwargs,
        )
        return out, None
    window = _window(module, kwargs)
    # keys hold the absolute positions [start, end): start > 0 only on a sliding-window layer
    # whose cache dropped positions
    end = kv_len if window is None else session.key_end(q_len, kv_len, window)
    start = end - kv_len
    roles = session.key_roles(end, query.device, expand)  # (b * expand, end) absolute
    step = end - session.prompt_length
    recorder = session.recorder
    record = recorder is not None and step >= 0 and recorder.wants(layer, step)
    split = None
    softcap = kwargs.get("softcap")
    if (
        SPLIT
        and attention_mask is None
        and start == 0
        and softcap is None
        and getattr(module, "is_causal", True)
    ):
        split = session.split(layer, q_len, kv_len, query.device)
    cut = None
    if split is None:
        present = session.query_role_codes(end - q_len, end)
        cut = blocked(session.knockouts, layer, roles[:, end - q_len :], roles, present, expand)
        if cut is not None and start:
            cut = cut[:, :, start:]  # (b, q, kv): the keys the layer holds
    if split is not None and split.groups:
        out = _split_attention(module, query, key, value, split, scaling, dropout, kwargs)
        row = split.last_row
    elif cut is None:
        # capture only, or nothing knocked out in this call: the output is SDPA's own; the
        # captured row is the last query, which sees every key that the given mask lets it see
        # (all of them when the mask is None)
        out = _kernel(module, query, key, value, attention_mask, scaling, dropout, kwargs)
        row = attention_mask[:, :, -1:, :] if attention_mask is not None else None
    else:
        mask = (
            attention_mask
            if attention_mask is not None
            else _implied(module, q_len, kv_len, query.device)
        )
        knocked = mask & ~cut[:, None]  # (b, 1, q, kv)
        if window is not None and session.self_blocking:
            _check_rows(session, mask, knocked, layer)
        mask = knocked
        out = _kernel(module, query, key, value, mask, scaling, dropout, kwargs)
        row = mask[:, :, -1:, :]
    if record and recorder is not None:
        weights = _last_row_weights(query, key, row, scaling, softcap)  # (b, h, kv)
        recorder.record(layer, step, _absolute(weights, start), roles)
    return out, None


# -- sliding-window layers: which absolute positions the keys hold -----------------------------


def _window(module: torch.nn.Module, kwargs: dict[str, Any]) -> int | None:
    """The layer's sliding window in positions (the query's own included), None for a layer
    that sees every earlier position."""
    window = kwargs.get("sliding_window") or getattr(module, "sliding_window", None)
    return int(window) if window else None


def _absolute(
    weights: torch.Tensor,  # (b, h, kv) over keys at absolute positions [start, start + kv)
    start: int,
) -> torch.Tensor:  # (b, h, start + kv)
    """Attention weights over every absolute position: the positions a sliding-window layer's
    cache dropped get weight 0 (the query cannot see them)."""
    if not start:
        return weights
    return torch.nn.functional.pad(weights, (start, 0))


def _check_rows(
    session: Session,
    mask: torch.Tensor,  # (b, 1, q, kv) bool before the knockout
    knocked: torch.Tensor,  # (b, 1, q, kv) bool after it
    layer: int,
) -> None:
    """Refuse a knockout that leaves a query of a sliding-window layer no key to attend to
    (its window holds blocked keys only): softmax over nothing has no value. Rows that had no
    key before it (padding) are not the knockout's doing."""
    if bool((mask.any(dim=-1) & ~knocked.any(dim=-1)).any()):
        session.refuse(
            f"a knockout leaves a query at layer {layer} no key to attend to: the layer's"
            " sliding window holds only keys the knockout blocks for it; choose src and tgt"
            " roles that differ or other layers"
        )


def _cross_attention(
    session: Session,
    module: torch.nn.Module,
    layer: int,
    expand: int,  # batch rows per prompt row (beams, sequences)
    query: torch.Tensor,  # (b, h, q, d) text positions
    key: torch.Tensor,  # (b, h_kv, v, d) the image's vision states
    value: torch.Tensor,  # (b, h_kv, v, d)
    attention_mask: torch.Tensor | None,  # (b, 1, q, v) float additive, or None
    scaling: float | None,
    dropout: float,
    kwargs: dict[str, Any],
) -> torch.Tensor:  # (b, q, h, d)
    """A cross-attention layer (keys: vision states, all of role image): the model's own
    attention, then the rows of queries whose role a knockout cuts off from the image at this
    layer set to 0 (they read nothing: no softmax over an empty key set is ever formed); the
    other rows are the model's own, bit for bit."""
    b, _, q_len, _ = query.shape
    start, end = session.text_positions(q_len)
    out, _ = sdpa_attention_forward(
        module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
    )
    images = torch.full(
        (b, key.shape[2]), int(Role.IMAGE), dtype=torch.int8, device=query.device
    )  # (b, v) the role of every key
    present = session.query_role_codes(start, end)
    query_roles = session.key_roles(end, query.device, expand)[:, start:end]  # (b, q)
    cut = blocked(session.knockouts, layer, query_roles, images, present, expand)  # (b, q, v)
    rows = cut.any(dim=-1) if cut is not None else None  # (b, q) rows that read nothing
    if rows is not None:
        out = out.masked_fill(rows[:, :, None, None], 0.0)
    recorder = session.recorder
    step = end - session.prompt_length
    if recorder is not None and step >= 0 and recorder.wants(layer, step):
        bias = attention_mask[:, :, -1:, :] if attention_mask is not None else None
        weights = _last_row_weights(query, key, bias, scaling)  # (b, h, v)
        if rows is not None:
            weights = weights * (~rows[:, -1]).to(weights.dtype)[:, None, None]
        recorder.record(layer, step, weights, images)
    return out


def _split_attention(
    module: torch.nn.Module,
    query: torch.Tensor,  # (b, h, q, d)
    key: torch.Tensor,  # (b, h_kv, kv, d)
    value: torch.Tensor,  # (b, h_kv, kv, d)
    split: Split,
    scaling: float | None,
    dropout: float,
    kwargs: dict[str, Any],
) -> torch.Tensor:  # (b, q, h, d)
    """Knockout without a (b, 1, q, kv) mask: plain causal SDPA for every row (unless the groups
    cover them all), then each group's rows again over its kept keys only, written over."""
    out = None
    if not split.covers:
        out, _ = sdpa_attention_forward(
            module, query, key, value, None, scaling=scaling, dropout=dropout, **kwargs
        )
    plain = {k: v for k, v in kwargs.items() if k != "is_causal"}
    for group in split.groups:
        rows = query if group.rows.numel() == query.shape[2] else query.index_select(2, group.rows)
        keys, values = key, value
        if group.keys is not None:
            keys = key.index_select(2, group.keys)  # (b, h_kv, k, d)
            values = value.index_select(2, group.keys)
        part, _ = sdpa_attention_forward(
            module,
            rows,
            keys,
            values,
            group.mask,
            scaling=scaling,
            dropout=dropout,
            is_causal=False,
            **plain,
        )  # (b, r, h, d)
        if out is None and group.rows.numel() == query.shape[2]:
            out = part
        else:
            if out is None:
                out = part.new_empty(query.shape[0], query.shape[2], *part.shape[2:])
            out.index_copy_(1, group.rows, part)
    assert out is not None  # split.groups is never empty here
    return out


def _last_row_weights(
    query: torch.Tensor,  # (b, h, q, d)
    key: torch.Tensor,  # (b, h_kv, kv, d)
    row_mask: torch.Tensor | None,  # (b or 1, 1, 1, kv) bool or float additive, None: all keys
    scaling: float | None,
    softcap: float | None = None,
) -> torch.Tensor:  # (b, h, kv) float32
    """Softmax attention of the last query row, computed per key-value head group (no repeat);
    scores soft-capped (tanh(s / cap) * cap) when the layer passes `softcap`. A bool `row_mask`
    keeps the keys that are True; a float one is added to the scores."""
    b, h, _, d = query.shape
    h_kv, kv = key.shape[1], key.shape[2]
    scale = scaling if scaling is not None else d**-0.5
    q = query[:, :, -1, :].float().reshape(b, h_kv, h // h_kv, d)  # (b, h_kv, g, d)
    scores = torch.matmul(q, key.float().transpose(-1, -2)) * scale  # (b, h_kv, g, kv)
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    scores = scores.reshape(b, h, kv)
    if row_mask is not None and row_mask.dtype == torch.bool:
        scores = scores.masked_fill(~row_mask[:, :, -1, :], float("-inf"))  # (b, 1, kv)
    elif row_mask is not None:
        scores = scores + row_mask[:, :, -1, :].float()  # (b, 1, kv)
    return scores.softmax(dim=-1)


def softcapped_attention(
    module: torch.nn.Module,
    qkv: tuple[torch.Tensor, torch.Tensor, torch.Tensor],  # (b, h | h_kv, q | kv, d) each
    mask: torch.Tensor | None,  # (b | 1, 1, q, kv) bool, or None
    scaling: float | None,
    dropout: float,
    softcap: float,
) -> torch.Tensor:  # (b, q, h, d)
    """Soft-capped attention (Gemma 2, PaliGemma 2: `softcap` = `attn_logit_softcapping`),
    which SDPA cannot compute, as transformers' eager attention computes it: scores =
    (q k^T) * scaling, tanh(scores / cap) * cap, the mask added (0 / the dtype's minimum),
    softmax in float32 cast back, dropout, times V: the same operations in the same order, so
    the same output. Without a mask: what SDPA would imply (`_implied`: causal for a causal
    module when q > 1, every key otherwise). Knockout and capture act on it like on SDPA, in
    `attention` (the mask given here already holds the knockout: paper Sec. 4.1, Eq. 3-4).

    Args:
        module: the layer's attention module (`is_causal`, `training`).
        qkv: query (b, h, q, d), key and value (b, h_kv, kv, d), h a multiple of h_kv.
        mask: (b or 1, 1, q, kv) bool (True: may attend) or additive float, or None.
        scaling: softmax scale (d**-0.5 when None); dropout: as transformers passes it.
        softcap: the cap (scores become tanh(s / cap) * cap).

    Returns:
        (b, q, h, d) attention output in the query's dtype.
    """
    query, key, value = qkv
    _, h, q_len, d = query.shape
    kv_len = key.shape[2]
    if mask is None and q_len > 1 and getattr(module, "is_causal", True):
        mask = _causal(q_len, kv_len, query.device)
    groups = h // key.shape[1]
    keys = key.repeat_interleave(groups, dim=1) if groups > 1 else key  # (b, h, kv, d)
    values = value.repeat_interleave(groups, dim=1) if groups > 1 else value
    scale = scaling if scaling is not None else d**-0.5
    scores = torch.matmul(query, keys.transpose(2, 3)) * scale  # (b, h, q, kv)
    scores = torch.tanh(scores / softcap) * softcap
    if mask is not None:
        if mask.dtype == torch.bool:
            floor = torch.finfo(scores.dtype).min
            mask = torch.zeros((), dtype=scores.dtype, device=scores.device).masked_fill(
                ~mask.to(scores.device), floor
            )  # (b | 1, 1, q, kv) additive
        scores = scores + mask
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)  # (b, h, q, kv)
    probs = torch.nn.functional.dropout(probs, p=dropout, training=module.training)
    return torch.matmul(probs, values).transpose(1, 2).contiguous()  # (b, q, h, d)


def register() -> None:
    """Make "vlmflow" a name transformers accepts for `attn_implementation` (idempotent)."""
    AttentionInterface.register(NAME, attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)


register()
