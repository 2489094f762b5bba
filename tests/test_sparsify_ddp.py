"""Training across processes (sparsify.ddp): 2-process gloo runs on CPU through torchrun.

The DDP runs are launched once per module (tests/_ddp_worker.py) and shared by the tests that read
them; each launch takes a few seconds (two Python processes importing torch).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, SequentialSampler

from tilesparse.errors import CheckpointError
from tilesparse.sparsify.checkpoint import plain_state_dict, read_checkpoint
from tilesparse.sparsify.ddp import (
    Distributed,
    DistributedError,
    ShardSampler,
    check_same,
    digests,
    mismatches,
    strip_nproc,
)
from tilesparse.sparsify.trainer import Trainer

sys.path.insert(0, str(Path(__file__).parent))
import _ddp_worker as worker  # noqa: E402

pytestmark = pytest.mark.ddp
ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(worker.__file__)
CNN_STEPS_PER_EPOCH = worker.N_TRAIN["digits_cnn"] // worker.BATCH
TOLERANCE = 1e-5  # max |w_ddp - w_single| after 84 SGD steps (measured ~4e-7): the same sums in another order


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1"}


def torchrun(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(WORKER),
           *args]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)


# On this CPU build a gloo rank now and then aborts at interpreter exit, after its work and
# destroy_process_group ("terminate called without an active exception": a C++ thread still joinable
# at shutdown). That exit code alone is tolerated; every caller then checks what the run wrote and
# printed, so a rank that died before finishing still fails the test.
TEARDOWN_ABORT = "terminate called without an active exception"


def _ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0 or TEARDOWN_ABORT in proc.stderr, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp") / "plain"
    _ok(torchrun(str(out), "plain", "2", "--accumulate", "2"))
    return out


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp") / "cnn"
    _ok(torchrun(str(out), "digits_cnn", "2"))
    return out


def _final(out: Path) -> dict:
    return torch.load(out / "final.pt", weights_only=True)


def test_two_processes_match_one_with_the_same_global_batch(plain_run):
    """The 2-process run steps on 2 accumulated global batches of 16 (8 per process, gradients synced
    on the 2nd); one process with the same seeded, shuffled loader in batches of 32 takes the same 32
    samples per step and reaches its weights within TOLERANCE after 2 epochs of 42 steps."""
    torch.set_num_threads(1)
    net, sp, meth, train, test, cfg = worker.build("plain", 2, "oneshot")
    result = Trainer(net, sp, meth, train, test, cfg, progress=False).fit()
    ddp = _final(plain_run)
    ref = plain_state_dict(net)
    assert ddp["state"].keys() == ref.keys()
    worst = max(float((ddp["state"][k] - ref[k]).abs().max()) for k in ref)
    assert worst < TOLERANCE
    assert ddp["accuracy"] == pytest.approx(result.final_accuracy)
    assert ddp["history"] == pytest.approx([h.train_loss for h in result.history], rel=1e-5)


def test_killed_run_resumes_to_the_uninterrupted_result(cnn_run, tmp_path):
    """Both ranks end abruptly 5 steps into the 2nd epoch; --resume from last.pt (epoch 1) ends on the
    uninterrupted run's weights, BatchNorm statistics and masks, bit for bit."""
    out = tmp_path / "killed"
    killed = torchrun(str(out), "digits_cnn", "2", "--kill-at", str(CNN_STEPS_PER_EPOCH + 5))
    assert killed.returncode != 0
    assert not (out / "final.pt").exists()
    assert read_checkpoint(out / "last.pt")["extra"]["epoch"] == 0
    _ok(torchrun(str(out), "digits_cnn", "2", "--resume"))
    resumed, whole = _final(out), _final(cnn_run)
    for k, v in whole["state"].items():
        assert torch.equal(resumed["state"][k], v), k
    assert resumed["history"] == whole["history"]
    assert digests(resumed["masks"]) == digests(whole["masks"])


def test_rank0_alone_writes_checkpoints(plain_run, cnn_run):
    for out, epochs in ((plain_run, 2), (cnn_run, 2)):
        assert not (out / "writes-rank1.txt").exists()
        assert (out / "writes-rank0.txt").read_text().split() == ["last.pt"] * epochs
        assert read_checkpoint(out / "last.pt")["extra"]["processes"] == 2


def test_masks_identical_on_every_rank(cnn_run):
    """Incremental pruning every epoch and at the end (BatchNorm recalibrated each time): both ranks end
    on the same masks, at the target."""
    ranks = [json.loads((cnn_run / f"masks-rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]
    final = _final(cnn_run)["masks"]
    assert digests(final) == ranks[0]
    assert all(1 - m.float().mean() == pytest.approx(0.5, abs=0.07) for m in final.values())


def test_mismatches_names_ranks_and_tensors():
    same = {"a": 1, "b": 2}
    assert mismatches([same, dict(same), dict(same)]) == []
    assert mismatches([same, {"a": 1, "b": 3}, {"a": 1}]) == ["rank 1: b", "rank 2: b"]


def _check_worker(rank: int, store: str, out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    dist = Distributed(rank, 2, rank, torch.device("cpu"))
    w = torch.arange(6.0)
    if rank == 1:
        w[3] += 1e-6  # one weight off by one ulp-ish step
    results = []
    cases = (("same", {"w": torch.arange(6.0)}), ("different", {"w": w, "m": torch.ones(2, dtype=torch.bool)}))
    for name, tensors in cases:
        try:
            check_same(digests(tensors), name, dist)
            results.append("ok")
        except DistributedError as e:
            results.append(str(e))
    Path(out, f"rank{rank}.json").write_text(json.dumps(results))
    torch.distributed.destroy_process_group()


def test_check_same_detects_a_deliberate_mismatch_on_every_rank(tmp_path):
    mp.spawn(_check_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2)
    for r in (0, 1):
        same, different = json.loads((tmp_path / f"rank{r}.json").read_text())
        assert same == "ok"
        assert different == "different: the processes disagree with rank 0 on rank 1: w"


def test_strip_nproc():
    assert strip_nproc(["sparsify", "m", "--nproc", "2", "--epochs", "1"]) == (["sparsify", "m", "--epochs", "1"], 2)
    assert strip_nproc(["sparsify", "--nproc=4", "m"]) == (["sparsify", "m"], 4)
    assert strip_nproc(["sparsify", "m"]) == (["sparsify", "m"], None)


def test_nproc_launches_two_processes_from_the_cli(tmp_path):
    """`tilesparse sparsify --nproc 2` runs torchrun itself; OUT is written once, by rank 0."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "tilesparse", "sparsify", "digits_cnn", "--epochs", "1", "--nproc", "2",
           "--threads", "1", "-o", str(out)]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
    _ok(proc)
    assert proc.stdout.count("accuracy after") == 1
    last = read_checkpoint(out / "last.pt")
    assert last["extra"]["processes"] == 2
    assert read_checkpoint(out / "sparse.pt")["sparsifier"]["masks"].keys() == last["sparsifier"]["masks"].keys()


def test_nproc_refusal_exits_with_the_processes_code(tmp_path):
    cmd = [sys.executable, "-m", "tilesparse", "sparsify", "digits_cnn", "--epochs", "1", "--nproc", "2",
           "--resume", "-o", str(tmp_path / "none")]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "cannot resume: no checkpoint" in proc.stderr


def test_resume_refuses_another_amp(tmp_path):
    """--resume compares the mixed precision and accumulation like any training setting."""
    torch.set_num_threads(1)
    net, sp, meth, train, test, cfg = worker.build("plain", 1, "oneshot")
    Trainer(net, sp, meth, _few(train), None, cfg, checkpoint_dir=tmp_path, progress=False).fit()
    net, sp, meth, train, test, cfg = worker.build("plain", 2, "oneshot")
    cfg = cfg.model_copy(update={"epochs": 2, "amp": "bf16", "accumulate": 2})
    with pytest.raises(CheckpointError, match="amp none, accumulate 1.*amp bf16, accumulate 2"):
        Trainer(net, sp, meth, _few(train), None, cfg, checkpoint_dir=tmp_path, progress=False).fit(resume=True)


def _few(loader: DataLoader, n: int = 128) -> DataLoader:
    return DataLoader(torch.utils.data.Subset(loader.dataset, range(n)), batch_size=loader.batch_size)


def test_shard_sampler_splits_one_order_over_the_ranks():
    base = SequentialSampler(range(7))
    shards = [list(ShardSampler(base, r, 3)) for r in range(3)]
    assert shards == [[0, 3, 6], [1, 4, 0], [2, 5, 1]]  # padded with the order's first items
    assert [len(ShardSampler(base, r, 3)) for r in range(3)] == [3, 3, 3]
    exact = [list(ShardSampler(base, r, 3, pad=False)) for r in range(3)]
    assert exact == [[0, 3, 6], [1, 4], [2, 5]]
    assert [len(ShardSampler(base, r, 3, pad=False)) for r in range(3)] == [3, 2, 2]


def test_an_image_folder_trains_across_two_processes(tmp_path):
    """`--data DIR` under `--nproc 2`: the folder loader is sharded like any loader; the unreadable images
    either process skipped are reported once, by rank 0."""
    from test_data_folder import NET, make_tree

    (tmp_path / "net.py").write_text(NET)
    make_tree(tmp_path / "data")
    cmd = [sys.executable, "-m", "tilesparse", "sparsify", "net.py:make", "--data", "data", "--image-size", "16",
           "--workers", "0", "--epochs", "1", "--sparsity", "0.5", "--block", "2x2", "--nproc", "2", "-o", "run"]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120, cwd=tmp_path)
    _ok(proc)
    assert proc.stdout.count("accuracy after") == 1
    assert "skipped 1 unreadable image(s)" in proc.stdout
    assert read_checkpoint(tmp_path / "run" / "last.pt")["extra"]["processes"] == 2
