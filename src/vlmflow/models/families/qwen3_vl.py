"""Qwen3-VL and Qwen3-VL-MoE: the Qwen2-VL token layout, interleaved M-RoPE and deepstack.

What carries over from Qwen2-VL (`qwen_vl.QwenVLRoles`, whose methods this family inherits):
each image is `<|vision_start|>`, `t * (h / m) * (w / m)` `<|image_pad|>` tokens row by row,
`<|vision_end|>`, for its `image_grid_thw` (t, h, w) in patches and the merge size m (the
processor writes `prod(grid) / m**2` pad tokens; the vision tower merges m x m patches into
one token). The model's own `get_rope_index(input_ids, mm_token_type_ids, image_grid_thw)`
gives the three-axis rotary positions (3, b, n) and the per-row `rope_deltas` (b, 1) at which
a KV cache continues: the same call and shapes as Qwen2-VL. Qwen3-VL interleaves the axes over
the rotary frequencies (frequency i turns with the height position when i % 3 == 1 and with
the width position when i % 3 == 2, within three times that axis's `mrope_section` share, with
the time position otherwise) where Qwen2-VL gives each axis one block; the model's rotary
embedding does that from the same position ids, so sessions, variant batches
(`attention.batch`) and compressed contexts (`compression.context`) pass these positions
unchanged. Videos and their frame timestamps are not used (images only).

Deepstack: the vision tower also returns features of some of its blocks
(`vision_config.deepstack_visual_indexes`), and after decoder layer i (for the i-th of them)
the language model adds them to the hidden states of the `<|image_pad|>` positions and of no
other position (`visual_pos_masks`). An attention knockout `image -> query+generated` at every
layer therefore still cuts the picture off from the text: a text position's hidden state starts
from its own token embedding and changes only through its attention output and its own MLP
(in the MoE model, experts routed from that hidden state alone); deepstack never writes to it,
so the image's embeddings and its deepstack features alike reach a text position only through
attention to image keys, which the knockout blocks. (Exactly so in arithmetic. In the MoE
model the rows an expert multiplies together depend on where the image tokens were routed, so
a matrix kernel whose rounding depends on the number of rows could change the last bits of
text rows: the tests find the logits of two images equal to 1e-5, bit-identical for the dense
model.) What a text position
still learns is the image's token count and, through the rotary positions after it, its grid
(t, h, w): the shape of the prompt, as in every family, not the picture. Deepstack does make
the image positions' keys and values depend on the picture in early layers, which a knockout
at only some layers lets through at the others, as the image embeddings do in every family.
"""

from __future__ import annotations

from vlmflow.models.families.qwen_vl import QwenVLRoles
from vlmflow.models.families.registry import register


@register
class Qwen3VLRoles(QwenVLRoles):
    """Qwen3-VL / Qwen3-VL-MoE: the Qwen2-VL span layout and M-RoPE positions (module
    docstring: interleaved axes and deepstack need nothing else)."""

    family = "qwen3_vl"
    model_types = ("qwen3_vl", "qwen3_vl_moe")
