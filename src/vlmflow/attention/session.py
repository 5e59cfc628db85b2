"""`with vlmflow.session(handle, prompt, knockout=..., capture=...)`: scoped attention state.

The state lives in a ContextVar read by the registered attention function, so it works inside
`generate()` (which rejects unknown kwargs), with batches and padding, and never leaks out of
the `with` block. Which session applies where (threads included) is decided in
`vlmflow.attention.backend`: see `backend.current`.

Expanded batches: `num_beams` and `num_return_sequences` run k rows per prompt row (row r of
the expanded batch holds prompt row r // k; beam search reorders rows only within a prompt's
group), so roles and knockouts follow each row exactly. Capture records one row per prompt row
and refuses expanded batches, whose rows are beams reordered at every step, not the returned
sequences.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NoReturn

import torch

from vlmflow.attention import backend, guard
from vlmflow.attention.capture import Capture, CaptureResult, Recorder
from vlmflow.attention.knockout import Group, Knockout, ResolvedKnockout, Split, row_groups
from vlmflow.attention.layers import spans
from vlmflow.errors import VlmflowError
from vlmflow.models.layout import PromptLayout
from vlmflow.roles import Role

if TYPE_CHECKING:
    from vlmflow.models.loading import Handle, Prompt


_GENERATED = frozenset({int(Role.GENERATED)})
# generate() keywords that run several rows per prompt row
_EXPANDING = ("num_beams", "num_return_sequences")


class Session:
    """Knockouts and capture for one prompt batch; read by the attention function."""

    def __init__(
        self,
        handle: Handle,
        prompt: Prompt,
        knockouts: Sequence[Knockout] = (),
        capture: Capture | None = None,
    ) -> None:
        if (knockouts or capture) and handle.attn_implementation != backend.NAME:
            raise VlmflowError(
                f"knockout and capture need per-position masks, which {handle.attn_implementation}"
                " kernels cannot take: load the model with vlmflow.load(..., attn='sdpa')"
            )
        self.handle = handle
        self.prompt = prompt
        self.layout = layout = prompt.layout
        self.num_layers = handle.num_layers
        self.knockouts = [ResolvedKnockout.of(k, self.num_layers) for k in knockouts]
        batch = int(layout.codes.shape[0])
        for ko, spec in zip(self.knockouts, knockouts, strict=True):
            if bool((ko.tgt & ko.src).any()) and _starves(ko, layout.codes):
                raise VlmflowError(
                    f"knockout {spec} blocks a role from itself where its first position has no"
                    " earlier key of another role, leaving a query nothing to attend to: choose"
                    " src and tgt roles that differ"
                )
            if spec.rows is not None and max(spec.rows, default=0) >= batch:
                raise VlmflowError(
                    f"knockout {spec} names rows the prompt does not have: it has {batch} row(s)"
                )
        # decoder layers whose keys are the image's vision states (queries: text positions)
        self.cross = handle.roles.cross_attention_layers()
        for ko, spec in zip(self.knockouts, knockouts, strict=True):
            on_cross = sorted(set(ko.keys) & self.cross)
            if on_cross:
                raise VlmflowError(
                    f"knockout {spec} blocks prompt positions at cross-attention layers"
                    f" {spans(on_cross)}, whose keys are the image's tiles: choose a role"
                    " knockout there (e.g. image->generated) or self-attention layers"
                )
            guard.check(handle, prompt, ko.layers, f"knockout {spec}")
        self._touched = frozenset().union(*(k.layers for k in self.knockouts))
        self.recorder: Recorder | None = None
        if capture is not None:
            self.recorder = Recorder.of(capture, self.num_layers, _image_index(layout))
            recorder = self.recorder
            on_cross = sorted(recorder.image_layers & self.cross)
            if on_cross:
                raise VlmflowError(
                    f"image rows at cross-attention layers {spans(on_cross)} would cover the"
                    " image's tiles, not prompt positions: capture tile_layers there (the rows"
                    " maps and compress read on this model; image_layers at self-attention"
                    " layers only)"
                )
            if recorder.tile_layers and not recorder.tile_layers & self.cross:
                raise VlmflowError(
                    f"tile rows exist at cross-attention layers only, and tile_layers"
                    f" {capture.tile_layers} holds none (this model's: {spans(self.cross)}):"
                    " capture image_layers instead"
                )
            recorder.tile_layers &= self.cross  # the cross-attention layers of the set
            captured = recorder.fraction_layers | recorder.image_layers | recorder.tile_layers
            guard.check(handle, prompt, captured, "capture")
            self._touched |= captured
        self._codes = layout.codes.to(handle.device)
        self._by_device: dict[tuple[torch.device, int], torch.Tensor] = {}
        self._present: tuple[tuple[int, int], frozenset[int]] = ((-1, -1), frozenset())
        self._checked: set[int] = set()
        # a knockout blocking a role from itself: on a sliding-window layer a query's window may
        # hold blocked keys only, which the attention function checks per call
        self.self_blocking = any(bool((k.tgt & k.src).any()) for k in self.knockouts)
        # .end, .q: the model's forward pass in this thread; .reach: where its last one ended
        self._pass = threading.local()
        # every row holds the same roles and no padding: knockouts acting on every row can run
        # without a (b, 1, q, kv) mask (`split`)
        codes = layout.codes
        self._uniform = bool((codes == codes[:1]).all()) and not bool((codes == Role.PAD).any())
        self._splits: dict[tuple[Any, ...], Split | None] = {}  # plans for one key length
        self._splits_at = -1  # the key length the plans in _splits are for
        # the model's own modules: the session applies to them only
        model = handle.model
        self.modules = frozenset(
            [id(model)] + [id(m) for m in model.modules() if hasattr(m, "layer_idx")]
        )
        self.owner: threading.Thread | None = None  # the thread that entered the session
        self.is_open = False
        self.refusal: VlmflowError | None = None  # first refusal raised while it ran

    @property
    def rows(self) -> int:
        """Rows of the session's prompt batch."""
        return int(self.layout.codes.shape[0])

    def owns(self, module: torch.nn.Module) -> bool:
        """Whether `module` (an attention module or the model) belongs to the session's model."""
        return id(module) in self.modules

    def expansion(self, rows: int) -> int:
        """Rows run per prompt row for a batch of `rows` (`num_beams`, `num_return_sequences`).

        Raises VlmflowError when `rows` is no multiple of the prompt's rows: another prompt.
        """
        if rows % self.rows:
            self.refuse(
                f"the model ran a batch of {rows} row(s) inside a session on a prompt of"
                f" {self.rows} row(s): run the session's own prompt (s.generate), or open a"
                " session on the other prompt"
            )
        return rows // self.rows

    def check_capture_rows(self, rows: int) -> None:
        """Refuse capture over a batch of `rows` that is not one row per prompt row."""
        if self.recorder is not None and rows != self.rows:
            self.refuse(
                _expanded_capture(
                    f"a batch of {rows} rows for {self.rows} prompt row(s) (num_beams or"
                    " num_return_sequences > 1)"
                )
            )

    def refuse(self, message: str) -> NoReturn:
        """Raise VlmflowError(message) and keep it, so that reading the capture raises it too
        (a refusal inside a thread does not reach the thread that reads the results)."""
        error = VlmflowError(message)
        if self.refusal is None:
            self.refusal = error
        raise error

    def check_inputs(self, input_ids: torch.Tensor, past: int) -> None:
        """Refuse a forward pass whose token ids at prompt positions are not the prompt's.

        `input_ids` (b * k, q) holds positions [past, past + q) of every row; row r must hold
        prompt row r // k there (positions past the prompt are generated tokens: any id).
        Also refuses a pass that continues this thread's previous one inside a block of prompt
        positions attending both ways (`TokenRoles.cuts_bidirectional_block`: chunked prefill
        through PaliGemma's prefix or a Gemma 3 image), which the model computes in one pass.
        """
        n = self.prompt_length
        reach = getattr(self._pass, "reach", None)
        self._pass.reach = past + int(input_ids.shape[1])
        continued = 0 < past < n and past == reach
        if continued and self.handle.roles.cuts_bidirectional_block(self.prompt.inputs, past):
            self.refuse(
                f"a forward pass starting at prompt position {past} (chunked prefill:"
                " generate(prefill_chunk_size=...)) cuts a block of positions that attend to"
                " each other both ways, so the positions before it would not see the later"
                " ones as in the model's one pass: prefill the prompt in one pass (no"
                " prefill_chunk_size) or cut outside the block"
            )
        if past >= n:
            return
        k = self.expansion(int(input_ids.shape[0]))
        stop = min(past + int(input_ids.shape[1]), n)
        expected = self.prompt.input_ids[:, past:stop].to(input_ids.device)  # (b, stop - past)
        if not torch.equal(input_ids[:, : stop - past], expected.repeat_interleave(k, dim=0)):
            self.refuse(
                "the model ran other input ids than the session's prompt: a session's roles"
                " belong to the prompt it was opened on; open a session on the other prompt"
            )

    @property
    def prompt_length(self) -> int:
        return self.layout.length

    def text_positions(self, q_len: int) -> tuple[int, int]:
        """Text positions [start, end) of a cross-attention call over `q_len` queries: those of
        the forward pass under way (`begin_pass`). Raises VlmflowError when the pass is unknown
        (the model ran without `input_ids`) or holds another number of positions."""
        end: int | None = getattr(self._pass, "end", None)
        if end is None or getattr(self._pass, "q", 0) != q_len:
            self.refuse(
                "a cross-attention layer ran on text positions this session cannot place (a"
                " forward pass without input_ids): run the model on the prompt's input_ids"
            )
        return end - q_len, end

    def touches(self, layer: int) -> bool:
        """Whether a knockout or the capture of this session acts at decoder `layer`."""
        return layer in self._touched

    def key_roles(
        self, kv_len: int, device: torch.device | None = None, expand: int = 1
    ) -> torch.Tensor:
        """(b * expand, kv) role codes on `device`; positions past the prompt are generated
        tokens; row r holds prompt row r // expand (the rows of `num_beams` and
        `num_return_sequences`).

        One copy per device, so layers spread over several GPUs (`device_map="auto"`) each read
        their own without a transfer per call.
        """
        device = device or self._codes.device
        codes = self._by_device.get((device, expand))
        if codes is None or kv_len > codes.shape[1]:
            base = self._codes
            if kv_len > base.shape[1]:
                extra = torch.full(
                    (base.shape[0], 2 * kv_len - base.shape[1]),
                    int(Role.GENERATED),
                    dtype=base.dtype,
                    device=base.device,
                )
                self._codes = base = torch.cat([base, extra], dim=1)
            codes = base.to(device).repeat_interleave(expand, dim=0)
            self._by_device[(device, expand)] = codes
        return codes[:, :kv_len]

    def begin_pass(self, end: int | None, q_len: int = 0) -> None:
        """Note the forward pass of the session's model now running in this thread: it computes
        positions [end - q_len, end) (None: a pass whose positions are unknown, or none)."""
        self._pass.end = end
        self._pass.q = q_len

    def key_end(self, q_len: int, kv_len: int, window: int) -> int:
        """One past the absolute position of the last key of a call on a sliding-window layer
        (`window` positions, the query's own included) with `q_len` queries and `kv_len` keys.

        The keys are the positions [end - kv_len, end): a cache that dropped positions holds
        the last window - 1 of them (transformers' `DynamicSlidingWindowLayer`), so kv_len =
        window - 1 + q_len and `end` comes from the forward pass the model runs (`begin_pass`,
        its cache length plus its new positions); any other key count starts at position 0.
        Raises VlmflowError when the pass is unknown or does not fit the keys.
        """
        if q_len == kv_len or kv_len != window - 1 + q_len:
            return kv_len
        end: int | None = getattr(self._pass, "end", None)
        if end is None or getattr(self._pass, "q", 0) != q_len or end < kv_len:
            self.refuse(
                f"a sliding-window layer got {kv_len} keys for {q_len} queries outside a forward"
                " pass of the session's model over its input ids, so its keys' positions are"
                " unknown: run the model itself (s.generate or model(input_ids=...))"
            )
        return end

    def split(self, layer: int, q_len: int, kv_len: int, device: torch.device) -> Split | None:
        """How the call over positions [kv_len - q_len, kv_len) at `layer` computes its
        knockouts without a (b, 1, q, kv) mask, or None where it cannot or should not (rows that
        differ, padding, a multi-position pass after cached positions, or groups whose
        recomputation would cost more than the dense masked pass). Planned on the host once per
        key length and set of acting knockouts (key-set knockouts: with the positions blocked
        there), shared by every layer with the same set.
        """
        if not self._uniform or (q_len > 1 and q_len != kv_len):
            return None
        # the acting knockouts, with the index of the key set one blocks here (layers blocking
        # the same positions share a plan)
        acting = tuple(
            (i, ko.key_set.get(layer, -1))
            for i, ko in enumerate(self.knockouts)
            if layer in ko.layers
        )
        if self._splits_at != kv_len:
            self._splits.clear()
            self._splits_at = kv_len
        key = (acting, q_len, device)
        if key not in self._splits:
            self._splits[key] = self._plan(layer, q_len, kv_len, device)
        return self._splits[key]

    def _plan(self, layer: int, q_len: int, kv_len: int, device: torch.device) -> Split | None:
        codes = self.key_roles(kv_len, self.layout.codes.device)[0].long()  # (kv,) host-side
        start = kv_len - q_len
        found = row_groups(self.knockouts, layer, codes, start, self.rows)
        if found is None:
            return None
        groups: list[Group] = []
        cost = 0  # query-key products, against q * kv for the dense masked pass
        last_row = None
        covered = 0
        for rows, cut in found:
            last = int(rows.max())
            kept = (~cut[: last + 1]).nonzero().flatten()  # (k,) keys up to the last row
            if last == kv_len - 1:
                last_row = (~cut).to(device)[None, None, None, :]  # (1, 1, 1, kv)
            covered += int(rows.numel())
            if q_len == 1 and 2 * kept.numel() > kv_len:
                # a decode step keeping most keys: one (1, kv) mask costs less than a gather
                whole = (~cut).to(device)[None, None, None, :]  # (1, 1, 1, kv)
                groups.append(Group(rows.to(device) - start, None, whole))
                cost += kv_len
                continue
            visible = kept[None, :] <= rows[:, None]  # (r, k)
            mask = None if bool(visible.all()) else visible[None, None].to(device)
            groups.append(Group((rows - start).to(device), kept.to(device), mask))
            cost += int(rows.numel()) * int(kept.numel())
        covers = covered == q_len
        if not covers:
            cost += q_len * q_len // 2
        if q_len > 1 and cost > q_len * kv_len:
            return None
        return Split(tuple(groups), last_row, covers)

    def query_role_codes(self, start: int, end: int) -> frozenset[int]:
        """Role codes held by positions [start, end) of any row, from the host-side layout."""
        n = self.prompt_length
        if start >= n:
            return _GENERATED
        if self._present[0] != (start, end):
            codes = frozenset(int(c) for c in self.layout.codes[:, start : min(end, n)].unique())
            self._present = ((start, end), codes | (_GENERATED if end > n else frozenset()))
        return self._present[1]

    def check_layer(self, module: torch.nn.Module, kwargs: dict[str, Any]) -> None:
        """Refuse attention variants whose key positions or weights this backend cannot map."""
        layer = int(getattr(module, "layer_idx", -1))
        if layer in self._checked:
            return
        reason = guard.unsupported(module, kwargs)
        if reason:
            raise VlmflowError(
                f"layer {layer} uses {reason}: knockout and capture act on full softmax"
                " attention layers only"
            )
        self._checked.add(layer)

    @property
    def capture(self) -> CaptureResult:
        """What the session captured in its latest run over the prompt (each run from position
        0, e.g. each `s.generate()`, starts anew); raises VlmflowError if it captures nothing or
        refused a run (e.g. an expanded batch run in a thread)."""
        if self.recorder is None:
            raise VlmflowError("this session captures nothing: pass capture=Capture(...)")
        if self.refusal is not None:
            raise VlmflowError(str(self.refusal))
        return self.recorder.result()

    def generate(self, **kwargs: Any) -> Any:
        """`Handle.generate` on the session's prompt (greedy and `max_new_tokens=32` unless
        given; every `generate()` keyword passes through); returns what it returns.

        Raises VlmflowError for capture with `num_beams` or `num_return_sequences` > 1 (rows
        reordered by beam search are not the returned sequences) and for prompt inputs given
        as keywords.
        """
        expanded = [k for k in _EXPANDING if int(kwargs.get(k) or 1) > 1]
        if self.recorder is not None and expanded:
            self.refuse(_expanded_capture(", ".join(f"{k}={kwargs[k]}" for k in expanded)))
        return self.handle.generate(self.prompt, **kwargs)


def _expanded_capture(cause: str) -> str:
    return (
        f"capture records one row per prompt row, but {cause} runs several rows per prompt row"
        " whose order beam search changes at every step: capture without num_beams and"
        " num_return_sequences, or repeat the prompt in a batch (prepare_batch) and sample"
    )


def _image_index(layout: PromptLayout) -> torch.Tensor:
    """(b, n_image) image positions per row, -1 padded."""
    rows = [layout.image_positions(r) for r in range(layout.codes.shape[0])]
    width = max((len(r) for r in rows), default=0)
    index = torch.full((len(rows), width), -1, dtype=torch.long)
    for r, positions in enumerate(rows):
        index[r, : len(positions)] = torch.tensor(positions, dtype=torch.long)
    return index


@contextmanager
def session(
    handle: Handle,
    prompt: Prompt,
    knockout: Knockout | Sequence[Knockout] = (),
    capture: Capture | None = None,
) -> Iterator[Session]:
    """Scope knockouts and capture to the `with` block; they apply to `prompt`'s batch, on
    `handle`'s model only.

    Args:
        handle: the loaded model (`vlmflow.load`).
        prompt: the prepared batch the block runs (`Handle.prepare`); running another prompt
            in the block is an error.
        knockout: one `Knockout` or several; they combine (paper Sec. 4.1, Eq. 3-4).
        capture: what attention to record (`Capture`), or None.

    Yields:
        The `Session`: `s.generate(**generate_kwargs)` returns the new token ids (b, new)
        (greedy, 32 tokens unless overridden); after it, `s.capture` is a `CaptureResult`
        with `fractions` (steps, layers, b, 4) float32 and per chosen layer the attention rows
        over the image positions (steps, b, n_image), heads averaged, on CPU.

    Threads: code in the block, and threads run with `contextvars.copy_context().run` from it,
    use the session. A thread with no session of its own (e.g. transformers' streaming recipe,
    `generate` in a `threading.Thread`) runs the model under the session open on that model;
    when sessions on it are open in several threads, such a thread gets a VlmflowError.
    Raises VlmflowError for inputs the session cannot handle exactly (another prompt, capture
    with num_beams or num_return_sequences > 1).
    """
    knockouts = [knockout] if isinstance(knockout, Knockout) else list(knockout)
    state = Session(handle, prompt, knockouts, capture)
    with backend.entered(state):
        yield state


def _starves(knockout: ResolvedKnockout, codes: torch.Tensor) -> bool:
    """True when some query of a role the knockout blocks from itself would keep no key.

    codes: (b, n) prompt role codes. Under the causal mask a prompt query sees the keys up to
    itself, so each targeted position needs an earlier (or its own) key of an unblocked role
    that is not padding; decode steps (`generated`) see the whole prompt, so when `generated`
    is blocked from itself some prompt key of an unblocked role must exist in every row.
    On sliding-window layers a query sees fewer keys: the attention function checks those
    calls itself (`self_blocking`).
    """
    codes = codes.long()
    free = ~knockout.src[codes] & (codes != int(Role.PAD))  # (b, n) keys still visible
    seen = free.int().cummax(dim=1).values.bool()  # (b, n) a free key at or before
    if bool((knockout.tgt[codes] & ~seen).any()):
        return True
    generated = int(Role.GENERATED)
    both = bool(knockout.tgt[generated]) and bool(knockout.src[generated])
    return both and not bool(seen[:, -1].all())
