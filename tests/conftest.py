"""Shared test set-up.

Tests run under pytest-xdist with one worker per core, so each worker keeps torch to one thread
(two workers × two threads would oversubscribe a two-core machine).

Hypothesis profiles: "ci" (loaded when the environment variable CI is set, as CI does) draws the
same examples on every run, so a CI result depends on the commit only, and prints the blob that
reproduces a failure; "dev" (otherwise) draws new examples each run, to keep finding cases.
HYPOTHESIS_PROFILE=ci|dev overrides. Tests' own ``@settings`` set only ``max_examples`` and
``deadline``, so they keep the profile's other settings.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402  (after OMP_NUM_THREADS: torch reads it on import)
from hypothesis import settings  # noqa: E402

torch.set_num_threads(1)

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True, database=None)
settings.register_profile("dev")
_in_ci = os.environ.get("CI", "").lower() not in ("", "0", "false")
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if _in_ci else "dev"))


@pytest.fixture
def run_cli(tmp_path, monkeypatch, capsys):
    """``run_cli("compile", ...)``: the ``tilesparse`` command run in-process from ``tmp_path``;
    returns (exit code, captured output)."""
    import sys

    from tilesparse.cli.main import main

    monkeypatch.chdir(tmp_path)

    def run(*args):
        monkeypatch.setattr(sys, "argv", ["tilesparse", *args])
        with pytest.raises(SystemExit) as e:
            main()
        return e.value.code, capsys.readouterr()

    return run
