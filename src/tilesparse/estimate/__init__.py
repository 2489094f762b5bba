"""Timing: the time model, lower bounds, roofline, timelines (Table II lives in ``tilesparse.reports``)."""
