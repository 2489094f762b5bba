"""Timing: the time model, lower bounds, timelines, the paper's numbers."""
