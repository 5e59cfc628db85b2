"""Analyses beyond the paper, on the same attention sessions: answer tracing and the logit lens.

Imports no torch: the experiment registry and the report read `PAIR_NAMES` from here.
"""

# answer tracing's group pairs, source -> target (`vlmflow.analysis.trace.PAIRS`): the three
# flows of Zhang et al. (CVPR 2025) and their control `last->last`, the last position's
# attention to itself (the flows' curves read against it)
PAIR_NAMES = ("image->last", "image->question", "question->last", "last->last")
CONTROL_PAIRS = ("last->last",)
# traced when no pairs are given (the flows; the control is asked for by name)
DEFAULT_PAIRS = tuple(p for p in PAIR_NAMES if p not in CONTROL_PAIRS)
