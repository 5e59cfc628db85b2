"""Analyses beyond the paper, on the same attention sessions: answer tracing and the logit lens."""
