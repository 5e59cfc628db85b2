"""Analyses beyond the paper, on the same attention sessions: answer tracing and the logit lens.

Imports no torch: the experiment registry and the report read `PAIR_NAMES` from here.
"""

# answer tracing's group pairs, source -> target (`vlmflow.analysis.trace.PAIRS`)
PAIR_NAMES = ("image->last", "image->question", "question->last")
