"""Differential fuzzing of whole graphs: many random small networks (tests/fuzz_nets.py), each built,
compiled for a random array and block pattern, saved and reloaded, simulated and checked against
the integer reference (bit for bit), the byte/MAC accounting and PyTorch in float, then estimated
(tests/fuzz_harness.py). Example ``i`` of ``--seed S`` is the same on every run.

    python benchmarks/fuzz_graphs.py --examples 10000 --workers 2 --seed 0 --out benchmarks/results/fuzz.md

Every outcome is appended to a JSON-lines log next to ``--out`` (``fuzz.jsonl``) as it arrives;
``--resume`` skips the examples already in it (same seed), so an interrupted run continues. A
hang is cut after ``--timeout`` seconds and counted as a failure. The markdown report lists the
outcomes, refusals by kind, distinct failures with the smallest reproducing source, and the op
coverage.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse
import json
import platform
import signal
import statistics
import sys
import time
import warnings
from collections import Counter, defaultdict
from multiprocessing import get_context
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from fuzz_harness import Outcome, run_case  # noqa: E402  (tests/ on the path first)
from fuzz_nets import random_case  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DETAIL_CHARS = 4000  # of a failure's message / traceback kept in the log


class _Timeout(BaseException):  # not caught as a finding by the harness
    pass


def _alarm(signum, frame):  # noqa: ARG001 - signal handler signature
    raise _Timeout


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    signal.signal(signal.SIGALRM, _alarm)


def run_one(job: tuple[int, int, float, dict]) -> dict:
    """Example ``index`` of ``seed`` with a wall-clock limit; a JSON-able record."""
    seed, index, timeout, kw = job
    try:
        case = random_case(seed, index, **kw)
    except Exception as e:  # noqa: BLE001 - a generator bug is reported, not fatal to the run
        return {"seed": seed, "index": index, "status": "fail", "kind": f"generator: {type(e).__name__}: {e}",
                "seconds": 0.0, "cosine": None, "features": {}, "detail": repr(e), "case": ""}
    t0 = time.perf_counter()
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        out = run_case(case)
    except _Timeout:
        out = Outcome("fail", f"timeout (> {timeout:g} s)", "", time.perf_counter() - t0, features=dict(case.features))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    rec = {"seed": seed, "index": index, "status": out.status, "kind": out.kind, "seconds": round(out.seconds, 3),
           "cosine": out.cosine, "features": out.features}
    if out.status != "pass":
        rec["detail"] = out.detail[:DETAIL_CHARS]
    if out.status == "fail":
        rec["case"] = case.describe()
    return rec


def _done(log: Path, seed: int) -> dict[int, dict]:
    if not log.exists():
        return {}
    recs = {}
    for line in log.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:  # a line cut by an interrupted run
            continue
        if r.get("seed") == seed:
            recs[r["index"]] = r
    return recs


def run_all(a: argparse.Namespace, log: Path) -> list[dict]:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    done = _done(log, a.seed) if a.resume else {}
    if not a.resume:
        log.unlink(missing_ok=True)
    kw = {"inplace_reuse": a.inplace_reuse, "cat_height": a.cat_height}
    jobs = [(a.seed, i, a.timeout, kw) for i in range(a.examples) if i not in done]
    log.parent.mkdir(parents=True, exist_ok=True)
    fails = sum(r["status"] == "fail" for r in done.values())
    cols = (TextColumn("fuzzing"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[fails]} failed"),
            TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*cols) as bar, log.open("a") as f, get_context("fork").Pool(a.workers, _init_worker) as pool:
        task = bar.add_task("", total=a.examples, completed=len(done), fails=fails)
        for rec in pool.imap_unordered(run_one, jobs, chunksize=1):
            done[rec["index"]] = rec
            f.write(json.dumps(rec) + "\n")
            f.flush()
            fails += rec["status"] == "fail"
            bar.update(task, advance=1, fails=fails)
    return [done[i] for i in sorted(done) if i < a.examples]


# -- report ----------------------------------------------------------------------------------------


def _table(head: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *("| " + " | ".join(map(str, r)) + " |"
                                                                         for r in rows)]


def _outcomes(recs: list[dict]) -> list[str]:
    n = len(recs)
    by = Counter(r["status"] for r in recs)
    rows = [[s, by[s], f"{100 * by[s] / n:.1f} %"] for s in ("pass", "refused", "fail")]
    refusals = Counter(r["kind"] for r in recs if r["status"] == "refused")
    out = ["## Outcomes", "", *_table(["outcome", "examples", "share"], rows), "",
           "### Refusals by kind (a clean one-line TilesparseError while building or compiling)", ""]
    out += _table(["kind (message shape)", "examples", "first example"],
                  [[f"`{k}`", c, next(r["index"] for r in recs if r["kind"] == k)] for k, c in refusals.most_common()])
    return out if refusals else out[:-3] + ["No refusals."]


def _failures(recs: list[dict]) -> list[str]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in recs:
        if r["status"] == "fail":
            groups[r["kind"]].append(r)
    out = ["## Distinct failures", "", f"{len(groups)} distinct (by stage, exception type, location and message "
                                       f"shape), {sum(map(len, groups.values()))} examples.", ""]
    for kind, rs in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        small = min(rs, key=lambda r: len(r.get("case", "")))
        out += [f"### `{kind}` ({len(rs)} examples; smallest: #{small['index']})", "", "```text",
                small.get("detail", "").strip()[:1500], "```", "", "```python", small.get("case", "").strip(),
                "```", ""]
    return out


def _coverage(recs: list[dict]) -> list[str]:
    used = Counter(k for r in recs for k, v in r["features"].items() if v)
    total = Counter()
    for r in recs:
        total.update(r["features"])
    n = len(recs)
    rows = [[k, used[k], f"{100 * used[k] / n:.1f} %", total[k]] for k in sorted(used, key=_feature_order)]
    return ["## Op coverage", "", "Examples using each op / feature (and how many times in all).", "",
            *_table(["op / feature", "examples", "share", "occurrences"], rows)]


def _feature_order(k: str) -> tuple[int, str]:
    groups = ("conv", "batchnorm", "act", "maxpool", "avgpool", "adaptive", "add", "concat", "inplace", "dropout",
              "flatten", "linear", "ops", "array", "block", "sparsity")
    return next((i for i, g in enumerate(groups) if k.startswith(g)), len(groups)), k


def _fixed() -> list[str]:
    """The bugs found so far, one line each: every "Bug N:" docstring of
    tests/test_fuzz_regressions.py (one class per bug, its module written out)."""
    import ast

    src = Path(__file__).resolve().parent.parent / "tests" / "test_fuzz_regressions.py"
    docs = [ast.get_docstring(n) or "" for n in ast.parse(src.read_text()).body if isinstance(n, ast.ClassDef)]
    bugs = [" ".join(d.split()) for d in docs if d.startswith("Bug ")]
    out = ["## Bugs the fuzzer found, all fixed", "",
           f"{len(bugs)} distinct, each a regression test in tests/test_fuzz_regressions.py (cause, symptom):", ""]
    return out + [f"{i}. {b.split(': ', 1)[1]}" for i, b in enumerate(bugs, 1)]


def report(recs: list[dict], a: argparse.Namespace, wall: float) -> str:
    secs = sorted(r["seconds"] for r in recs) or [0.0]
    cos = [r["cosine"] for r in recs if r.get("cosine") is not None]
    cmd = f"python benchmarks/fuzz_graphs.py --examples {a.examples} --workers {a.workers} --seed {a.seed}"
    flags = " --inplace-reuse" * a.inplace_reuse + " --cat-height" * a.cat_height
    head = ["# Differential fuzzing of graphs", "", f"Command: `{cmd}{flags}`  ",
            f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {a.workers} workers; "
            f"wall {wall:.0f} s for the examples run now.  ",
            f"Examples: **{len(recs)}**; per example {statistics.mean(secs):.2f} s mean, "
            f"{statistics.median(secs):.2f} s median, {secs[int(0.99 * (len(secs) - 1))]:.2f} s p99, "
            f"{secs[-1]:.2f} s max.  ",
            "Float oracle: cosine of the dequantized output (on a calibration input) with PyTorch's, "
            f"min {min(cos, default=1):.4f}, "
            f"median {statistics.median(cos) if cos else 1:.4f} over the passing examples with 4 or more output "
            "values (a low one: an output that is a tiny, cancelling sum, within the propagated tolerance).", ""]
    return "\n".join(head + _outcomes(recs) + [""] + _failures(recs) + _fixed() + [""] + _coverage(recs)) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS / "fuzz.md")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per example before it counts as a hang")
    ap.add_argument("--resume", action="store_true", help="skip the examples already in the log (same seed)")
    ap.add_argument("--inplace-reuse", action=argparse.BooleanOptionalAction, default=True,
                    help="values changed in place may be read again")
    ap.add_argument("--cat-height", action=argparse.BooleanOptionalAction, default=True,
                    help="concats along the height axis too")
    a = ap.parse_args()
    log = a.out.with_suffix(".jsonl")
    t0 = time.perf_counter()
    recs = run_all(a, log)
    from tilesparse.utils.atomic import atomic_write_text

    atomic_write_text(a.out, report(recs, a, time.perf_counter() - t0))
    by = Counter(r["status"] for r in recs)
    print(f"{len(recs)} examples: {by['pass']} passed, {by['refused']} refused, {by['fail']} failed -> {a.out}")


if __name__ == "__main__":
    main()
