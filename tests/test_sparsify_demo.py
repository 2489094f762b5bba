"""run_demo end to end on a very short schedule (the real demo trains longer)."""

from tilesparse.sparsify import TrainingConfig
from tilesparse.sparsify.demo import run_demo


def test_run_demo_short():
    r = run_demo(seed=0, dense=TrainingConfig(epochs=2, lr=0.05), finetune=TrainingConfig(epochs=1, lr=0.01),
                 progress=False)
    assert r.dense_accuracy > 50  # 10 classes: chance is 10 %
    assert r.report.block_sparsity == 0.5
    assert set(r.sparsifier.sparsity().values()) == {0.5}
    assert 0 <= r.pruned_accuracy <= 100 and r.sparse_accuracy > 30
