"""Image folders from disk: ImageFolder trees through the ImageNet transforms (against torchvision's
ImageFolder and hand-computed normalised colours), corrupt images skipped and counted, clear errors
for bad trees, and the CLI end to end: a tiny generated ImageFolder trains (``sparsify --data``),
calibrates and compiles (``compile --calib``) and simulates bit-exact from the program's provenance."""

from __future__ import annotations

import json
import shutil
import sys
import warnings

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from tilesparse.cli.main import app, main
from tilesparse.data.folder import IMAGENET_MEAN, IMAGENET_STD, folder_loaders, tree_identity
from tilesparse.errors import ConfigError

runner = CliRunner()
pytestmark = pytest.mark.filterwarnings("ignore:.*skipping unreadable image")  # the warning is tested on its own
COLOURS = ((200, 30, 30), (30, 200, 30), (30, 30, 200))  # one per class
PER_CLASS = 6


def make_tree(root, splits=("train", "val"), classes=("ant", "bee", "cat"), corrupt=True):
    """``classes`` x PER_CLASS solid 32x32 PNGs per split (shade varying per image), and one corrupt
    .png in train/ant when ``corrupt``."""
    for split in splits:
        for name, colour in zip(classes, COLOURS, strict=False):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(PER_CLASS):
                Image.new("RGB", (32, 32), tuple(v - 4 * i for v in colour)).save(d / f"{i}.png")
    if corrupt:
        (root / "train" / classes[0] / "broken.png").write_bytes(b"\x89PNG not really")
    return root


def test_val_loader_matches_torchvision_imagefolder_and_hand_values(tmp_path):
    from torchvision import datasets
    from torchvision import transforms as T

    root = make_tree(tmp_path / "data")
    _, val = folder_loaders(root, batch_size=4, seed=0, image_size=16, workers=0)
    xs, ys = zip(*val, strict=True)
    x, y = torch.cat(xs), torch.cat(ys)
    ref = datasets.ImageFolder(str(root / "val"), T.Compose([T.Resize(18), T.CenterCrop(16), T.ToTensor(),
                                                            T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]))
    assert x.shape == (3 * PER_CLASS, 3, 16, 16) and val.classes == tuple(ref.classes)
    assert torch.equal(x, torch.stack([ref[i][0] for i in range(len(ref))]))
    assert y.tolist() == [t for _, t in ref.samples]
    first = torch.tensor([(COLOURS[0][c] / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c] for c in range(3)])
    assert torch.allclose(x[0], first[:, None, None].expand(3, 16, 16), atol=1e-6)  # a solid colour, normalised
    assert not val.skipped


def test_corrupt_image_is_skipped_counted_and_warned_once(tmp_path):
    root = make_tree(tmp_path / "data")
    train, _ = folder_loaders(root, batch_size=5, seed=0, image_size=16, workers=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):  # two epochs: counted once, warned once
            batches = list(train)
    assert sum(len(y) for _, y in batches) == 3 * PER_CLASS  # every readable image, the corrupt one left out
    assert all(x.shape[1:] == (3, 16, 16) and x.dtype == torch.float32 for x, _ in batches)
    assert list(train.skipped) == [str(root / "train" / "ant" / "broken.png")]
    assert [str(w.message) for w in caught if "unreadable" in str(w.message)][0].count("broken.png") >= 1
    assert sum("unreadable" in str(w.message) for w in caught) == 1


def test_a_split_with_no_readable_image_is_a_config_error(tmp_path):
    root = make_tree(tmp_path / "data", corrupt=False)
    for p in (root / "val").rglob("*.png"):
        p.write_bytes(b"garbage")
    _, val = folder_loaders(root, batch_size=4, image_size=16, workers=0)
    with warnings.catch_warnings(), pytest.raises(ConfigError, match="none of its 18 images is readable"):
        warnings.simplefilter("ignore")
        list(val)


def test_train_order_and_augmentation_are_seeded_and_independent_of_workers(tmp_path):
    """Epochs reseeded as the trainer does (``generator.manual_seed`` per epoch): the same batches with 0 or
    1 (persistent) worker, and from a fresh loader started at the second epoch (a resume)."""
    root = make_tree(tmp_path / "data", corrupt=False)

    def epochs(workers, seed, first=0):
        train, _ = folder_loaders(root, batch_size=6, seed=seed, image_size=16, workers=workers)
        out = []
        for epoch in range(first, 2):
            train.generator.manual_seed(seed * 1000 + epoch)
            out += list(train)
        return out

    def same(a, b):
        return len(a) == len(b) and all(torch.equal(xa, xb) and torch.equal(ya, yb)
                                        for (xa, ya), (xb, yb) in zip(a, b, strict=True))

    a = epochs(0, 3)
    assert same(a, epochs(1, 3)) and same(a[3:], epochs(1, 3, first=1)) and same(a[3:], epochs(0, 3, first=1))
    assert not same(a[:3], a[3:]) and not same(a, epochs(0, 4))


@pytest.mark.parametrize("setup,needle", [
    (lambda r: None, "does not exist"),
    (lambda r: make_tree(r, splits=("train",)), "has no val/ subfolder"),
    (lambda r: (r / "train").mkdir(parents=True) or (r / "val").mkdir(), "has no class folders"),
    (lambda r: [(r / s / "ant").mkdir(parents=True) for s in ("train", "val")], "has no image files"),
    (lambda r: make_tree(r, splits=("train",)) and make_tree(r, splits=("val",), classes=("ant", "bee", "dog")),
     "only in train/: cat; only in val/: dog"),
])
def test_bad_trees_are_clear_config_errors(tmp_path, setup, needle):
    root = tmp_path / "data"
    setup(root)
    with pytest.raises(ConfigError) as e:
        folder_loaders(root, image_size=16, workers=0)
    assert needle in str(e.value) and "--data" in str(e.value)


def test_tree_identity_follows_names_and_sizes(tmp_path):
    root = make_tree(tmp_path / "data")
    first = tree_identity(root)
    assert tree_identity(root) == first
    (root / "val" / "bee" / "0.png").rename(root / "val" / "bee" / "9.png")
    assert tree_identity(root) != first


NET = """
from torch import nn


def make():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1, stride=2),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 3))
"""


def _ok(args):
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    return r.output


@pytest.fixture
def trained(tmp_path, monkeypatch):
    """A project folder: net.py, a generated ImageFolder data/, a 1-epoch run in run/."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.py").write_text(NET)
    make_tree(tmp_path / "data")
    out = _ok(["sparsify", "net.py:make", "--data", "data", "--image-size", "16", "--workers", "0", "--epochs", "1",
               "--sparsity", "0.5", "--block", "2x2", "--lr", "0.05", "-o", "run"])
    assert "accuracy after" in out and "skipped 1 unreadable image(s)" in out and "broken.png" in out
    return tmp_path


def test_image_folder_trains_calibrates_compiles_and_simulates(trained):
    _ok(["compile", "run/sparse.pt", "--input-shape", "1,3,16,16", "-a", "2x2", "--calib", "data",
         "--calib-images", "4", "-o", "p.tsp", "--json", "p.json"])
    prov = json.loads((trained / "p.json").read_text())["provenance"]
    images = prov["calibration_images"]
    assert images["given"] == "data" and len(images["files"]) == 4
    assert all(f.startswith("val/") for f in images["files"])  # val/ when there is one, spread over classes
    assert {f.split("/")[1] for f in images["files"]} == {"ant", "bee", "cat"}
    assert prov["calibration"].startswith("images: n=4 from data")
    out = _ok(["simulate", "p.tsp"])
    assert "bit-exact" in out and "MISMATCH" not in out
    out = _ok(["simulate", "p.tsp", "--input", "data/val/bee/2.png"])  # verified on a real image
    assert "bit-exact" in out
    out = _ok(["simulate", "run/sparse.pt", "--input-shape", "1,3,16,16", "-a", "2x2", "--calib", "data",
               "--calib-images", "2"])  # compiled on the fly, calibrated on images
    assert "bit-exact" in out


def test_simulate_finds_moved_calibration_images_and_refuses_changed_ones(trained, monkeypatch, capsys):
    _ok(["compile", "run/sparse.pt", "--input-shape", "1,3,16,16", "-a", "2x2", "--calib", "data",
         "--calib-images", "3", "-o", "p.tsp"])
    shutil.move(trained / "data", trained / "moved")
    code, cap = _main(monkeypatch, capsys, "simulate", "p.tsp")
    assert code == 2 and "no longer exists" in cap.err and "--calib DIR" in cap.err
    assert "calibration images not at" in _ok(["simulate", "p.tsp", "--calib", "moved"])
    code, cap = _main(monkeypatch, capsys, "simulate", "p.tsp", "--calib-images", "5")
    assert code == 2 and "--calib-images 5 contradicts" in cap.err
    _ok(["compile", "run/sparse.pt", "--input-shape", "1,3,16,16", "-a", "2x2", "--calib", "moved", "--calib-images",
         "3", "--json", "q.json", "-o", "q.tsp"])
    first = json.loads((trained / "q.json").read_text())
    changed = trained / "moved" / first["provenance"]["calibration_images"]["files"][1]
    Image.new("RGB", (32, 32), (1, 2, 3)).save(changed)
    code, cap = _main(monkeypatch, capsys, "simulate", "q.tsp")
    assert code == 2 and "calibration images of q.tsp changed" in cap.err and "Traceback" not in cap.err


def test_calib_flag_errors(trained, monkeypatch, capsys):
    for args, needle in ((["--calib", "nowhere"], "nowhere does not exist"),
                         (["--calib-images", "3"], "give the folder too"),
                         (["--calib", "data", "--calib-images", "500"], "fewer than 500 readable images"),
                         (["--calib", "data", "--no-quantized"], "--no-quantized")):
        code, cap = _main(monkeypatch, capsys, "compile", "run/sparse.pt", "--input-shape", "1,3,16,16", "-a", "2x2",
                          "-o", "x.tsp", *args)
        assert code == 2 and needle in cap.err, cap.err
    assert not (trained / "x.tsp").exists()


def test_a_grey_model_trains_on_grey_images(trained):
    out = _ok(["sparsify", "digits_cnn", "--data", "data", "--image-size", "8", "--workers", "0", "--epochs", "1",
               "--sparsity", "0.5", "--block", "2x2", "-o", "grey"])  # digits_cnn reads 1x8x8
    assert "accuracy after" in out


def test_resume_compares_the_image_folder(trained, monkeypatch, capsys):
    code, cap = _main(monkeypatch, capsys, "sparsify", "net.py:make", "--data", "data", "--image-size", "12",
                      "--workers", "0", "--epochs", "1", "--sparsity", "0.5", "--block", "2x2", "--lr", "0.05",
                      "-o", "run", "--resume")
    assert code == 2 and "image_size 16" in cap.err and "image_size 12" in cap.err


def test_old_provenance_without_calibration_images_loads():
    from tilesparse.program.provenance import Provenance

    old = {"source": "digits_cnn", "source_kind": "zoo", "source_sha256": None, "weights": None,
           "weights_sha256": None, "pattern": "block", "block": [8, 8], "sparsity": 0.5, "selection": "l2-oneshot",
           "seed": 0, "quantization": "int8", "calibration": "random normal, n=2, seed=0",
           "input_shape": [1, 1, 8, 8], "array": "2x2", "time_model": "tilesparse-v1", "balance": True,
           "version": "0.1"}
    assert Provenance.from_dict(old).calibration_images is None
    with pytest.raises(Exception, match="calibration_images"):
        Provenance.from_dict({**old, "calibration_images": {"path": "/x"}})


def _main(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["tilesparse", *args])
    with pytest.raises(SystemExit) as e:
        main()
    return e.value.code, capsys.readouterr()
