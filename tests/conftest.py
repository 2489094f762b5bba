"""Shared test set-up. Tests run under pytest-xdist with one worker per core, so each worker keeps
torch to one thread (two workers × two threads would oversubscribe a two-core machine)."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import torch  # noqa: E402

torch.set_num_threads(1)
