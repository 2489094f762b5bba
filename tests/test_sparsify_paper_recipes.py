"""The paper's ImageNet recipes (ResNet-50, Inception-v3, VGG-16) load, say what the paper says, and run one
training step each on a generated image folder with random weights.

Small inputs keep the step fast on a CPU: 32x32 for ResNet-50 and VGG-16 (their adaptive pooling takes any
size; VGG-16's classifier is as large as at 224x224), 75x75 for Inception-v3 (its minimum)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms
from torchvision.datasets import ImageFolder

import tilesparse
from tilesparse.models.zoo import get_model
from tilesparse.sparsify import Recipe, sparsify_model

RECIPES = Path(tilesparse.__file__).parent / "recipes"
PAPER = {"resnet50": 32, "inception_v3": 75, "vgg16": 32}  # model -> input size of the smoke step


def _paper_recipe(model: str) -> Recipe:
    return Recipe.from_yaml(RECIPES / f"paper_{model}_imagenet.yaml")


@pytest.mark.parametrize("model", PAPER)
def test_paper_recipes_are_the_papers_method(model):
    r = _paper_recipe(model)
    assert (r.method, r.pattern, r.sparsity, r.score, r.selection) == ("oneshot", "8x8", 0.5, "l2", "balanced_rows")
    assert r.layer_types == ("conv",) and not r.include_first_conv
    assert r.training.lr_schedule == "cosine" and r.training.epochs > 0
    assert r.training.label_smoothing == (0.1 if model == "inception_v3" else 0.0)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """Two classes of two random RGB images each, as PNG files in class folders."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (root / cls).mkdir()
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    return root


@pytest.mark.parametrize("model", PAPER)
def test_paper_recipe_runs_one_step(model, image_folder):
    size = PAPER[model]
    recipe = _paper_recipe(model)
    recipe = recipe.model_copy(update={"training": recipe.training.model_copy(update={"epochs": 1, "batch_size": 2})})
    data = ImageFolder(str(image_folder), transforms.Compose([transforms.Resize((size, size)),
                                                              transforms.ToTensor()]))
    train = DataLoader(torch.utils.data.Subset(data, [0, 2]), batch_size=2)  # one step: one image of each class
    net = get_model(model, num_classes=2)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    res = sparsify_model(net, recipe, train, None, progress=False)
    (rec,) = res.fit.history
    assert np.isfinite(rec.train_loss) and rec.lr == recipe.training.lr and rec.sparsity == 0.5
    first = next(n for n, m in net.named_modules() if isinstance(m, torch.nn.Conv2d))
    assert first not in res.sparsifier.layers  # the paper keeps the first convolution dense
    assert all(isinstance(net.get_submodule(n), torch.nn.Conv2d) for n in res.sparsifier.layers)
    assert set(res.sparsifier.sparsity().values()) == {0.5}
    head = [k for k in before if k.endswith("weight") and before[k].dim() == 2][-1]  # dense, trained by the step
    assert not torch.equal(before[head], net.state_dict()[head])
