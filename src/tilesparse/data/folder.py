"""Images from disk: an ImageFolder tree (``ROOT/train/CLASS/*.png``, ``ROOT/val/CLASS/*.jpg``, the
layout of ``torchvision.datasets.ImageFolder``) with the standard ImageNet transforms.

A corrupt or unreadable image is skipped and counted (a warning on the first), never a crash
mid-epoch: the dataset yields None for it and the loader's collate drops it. Random augmentation
draws from a seed the sampler gives with each index (from the loader's seeded generator), so an
epoch's crops and flips do not depend on the number of workers, and a resumed run repeats them.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from tilesparse.errors import ConfigError

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "FolderLoader", "ImageFiles", "calibration_images", "calibration_root",
           "default_workers", "eval_transform", "eval_transform_name", "folder_loaders", "image_tensors",
           "images_sha256", "is_image_file", "load_image", "read_errors", "scan_folder", "train_transform",
           "tree_identity"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # ImageFolder's
RESIZE_RATIO = 256 / 224  # eval: resize the short side to 256 for a 224 crop
SPLITS = ("train", "val")
SEED_RANGE = 1 << 62


def is_image_file(path: str | Path) -> bool:
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


def default_workers() -> int:
    """DataLoader workers: min(4, CPU count)."""
    return min(4, os.cpu_count() or 1)


def _normalize(channels: int) -> Any:
    from torchvision import transforms as T

    if channels == 1:  # a grey model: the mean of the three channels' statistics
        return T.Normalize((sum(IMAGENET_MEAN) / 3,), (sum(IMAGENET_STD) / 3,))
    return T.Normalize(IMAGENET_MEAN, IMAGENET_STD)


def train_transform(size: int, channels: int = 3) -> Any:
    """RandomResizedCrop(size) + RandomHorizontalFlip + ToTensor + Normalize (ImageNet mean / std)."""
    from torchvision import transforms as T

    return T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(), _normalize(channels)])


def eval_transform(size: int | tuple[int, int], channels: int = 3) -> Any:
    """Resize(short side to size * 256/224) + CenterCrop(size) + ToTensor + Normalize."""
    from torchvision import transforms as T

    h, w = (size, size) if isinstance(size, int) else size
    return T.Compose([T.Resize(round(min(h, w) * RESIZE_RATIO)), T.CenterCrop((h, w)), T.ToTensor(),
                      _normalize(channels)])


def eval_transform_name(size: tuple[int, int]) -> str:
    """How ``eval_transform`` prepares an image, for a provenance record."""
    return (f"eval transform (resize {round(min(size) * RESIZE_RATIO)}, center crop {size[0]}x{size[1]}, "
            "ImageNet mean/std)")


def load_image(path: str | Path, channels: int = 3) -> Any:
    """The PIL image at ``path`` in RGB (``channels`` 3) or grey (1); OSError-like errors pass through."""
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("L" if channels == 1 else "RGB")


def read_errors() -> tuple[type[BaseException], ...]:
    """What a corrupt, truncated or hostile image raises while PIL decodes it."""
    from PIL import Image

    return OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError


@dataclass(frozen=True)
class ImageFiles:
    """The images of one folder of class folders: sorted (path, class index) pairs."""

    root: Path
    classes: tuple[str, ...]
    samples: tuple[tuple[Path, int], ...]


def scan_folder(root: Path, what: str = "--data") -> ImageFiles:
    """Class folders (sorted names, as ImageFolder numbers them) and their image files; ConfigError
    naming the folder for no class folders or no images."""
    classes = tuple(sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")))
    if not classes:
        raise ConfigError(what, [f"{root} has no class folders; expected one subfolder per class holding images"])
    samples = tuple((p, i) for i, c in enumerate(classes) for p in sorted((root / c).rglob("*"))
                    if p.is_file() and is_image_file(p))
    if not samples:
        raise ConfigError(what, [f"{root} has no image files in its class folders ({', '.join(classes[:5])}"
                                 f"{', ...' if len(classes) > 5 else ''}); expected {', '.join(IMAGE_EXTENSIONS)}"])
    return ImageFiles(root, classes, samples)


def _splits(path: Path, what: str) -> tuple[ImageFiles, ImageFiles]:
    if not path.exists():
        raise ConfigError(what, [f"{path} does not exist; expected a folder with train/ and val/ subfolders"])
    if not path.is_dir():
        raise ConfigError(what, [f"{path} is not a folder; expected a folder with train/ and val/ subfolders"])
    missing = [s for s in SPLITS if not (path / s).is_dir()]
    if missing:
        hint = f" (give its parent {path.parent}, not {path.name}/ itself)" if path.name in SPLITS else ""
        raise ConfigError(what, [f"{path} has no {' or '.join(s + '/' for s in missing)} subfolder; expected "
                                 f"train/ and val/, each with one subfolder per class{hint}"])
    train, val = (scan_folder(path / s, what) for s in SPLITS)
    if train.classes != val.classes:
        only_t, only_v = sorted(set(train.classes) - set(val.classes)), sorted(set(val.classes) - set(train.classes))
        diff = "; ".join([f"only in train/: {', '.join(only_t[:5])}"] * bool(only_t)
                         + [f"only in val/: {', '.join(only_v[:5])}"] * bool(only_v))
        raise ConfigError(what, [f"{path}: train/ and val/ have different class folders ({diff}); expected the "
                                 "same classes in both"])
    return train, val


class _Images(Dataset):
    """(tensor, class) per image; None for an unreadable one (with its path and error, for counting).
    An index may come with a seed (``_SeededShuffle``): the transform's randomness then draws from it."""

    def __init__(self, files: ImageFiles, transform: Any, channels: int) -> None:
        self.files, self.transform, self.channels = files, transform, channels

    def __len__(self) -> int:
        return len(self.files.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Any, ...]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        path, label = self.files.samples[index]
        try:
            img = load_image(path, self.channels)
        except read_errors() as e:
            return None, str(path), f"{type(e).__name__}: {str(e).replace(' ' + repr(str(path)), '')[:200]}"
        if seed is None:
            return self.transform(img), label
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(img), label


class _SeededShuffle(Sampler):
    """A permutation of the indices, each with a seed for its augmentation, both from ``generator``."""

    def __init__(self, n: int, generator: torch.Generator) -> None:
        self.n, self.generator = n, generator

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = torch.randperm(self.n, generator=self.generator)
        seeds = torch.randint(0, SEED_RANGE, (self.n,), generator=self.generator)
        return iter(zip(order.tolist(), seeds.tolist(), strict=True))


def _collate(batch: list) -> tuple[torch.Tensor | None, torch.Tensor | None, list[tuple[str, str]]]:
    """Stack the readable samples; the unreadable ones' (path, error) travel beside them."""
    good = [b for b in batch if b[0] is not None]
    bad = [(b[1], b[2]) for b in batch if b[0] is None]
    if not good:
        return None, None, bad
    return torch.stack([b[0] for b in good]), torch.tensor([b[1] for b in good], dtype=torch.int64), bad


class FolderLoader:
    """A DataLoader of (images, classes) batches that skips unreadable images: ``skipped`` maps
    each one's path to its error (a warning on the first). ``generator`` seeds the shuffling and
    augmentation (the trainer reseeds it every epoch); the DataLoader never draws from it, so an
    epoch's order is the same with or without (persistent) workers, and after a resume."""

    def __init__(self, loader: DataLoader, where: str) -> None:
        self.loader, self.where = loader, where
        self.skipped: dict[str, str] = {}

    @property
    def generator(self) -> torch.Generator | None:
        sampler = self.loader.sampler
        return sampler.generator if isinstance(sampler, _SeededShuffle) else None

    @property
    def dataset(self) -> Dataset:
        return self.loader.dataset

    @property
    def classes(self) -> tuple[str, ...]:
        return self.loader.dataset.files.classes  # type: ignore[attr-defined]

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        good = 0
        for x, y, bad in self.loader:
            for path, err in bad:
                if not self.skipped:
                    warnings.warn(f"{self.where}: skipping unreadable image {path} ({err}); the count is reported "
                                  "at the end", stacklevel=2)
                self.skipped.setdefault(path, err)
            if x is not None:
                good += len(x)
                yield x, y
        if not good:  # an epoch of nothing would train on nothing (and divide by zero)
            raise ConfigError("--data", [f"{self.where}: none of its {len(self.skipped)} images is readable (e.g. "
                                         f"{next(iter(self.skipped.items()), ('', ''))[0]}); expected images PIL "
                                         "can open"])


def folder_loaders(path: str | Path, batch_size: int = 64, seed: int = 0, image_size: int = 224,
                   workers: int | None = None, channels: int = 3,
                   eval_batch_size: int | None = None) -> tuple[FolderLoader, FolderLoader]:
    """(train loader, val loader) over ``path/train`` and ``path/val``: random crops and flips for
    training (shuffled by a seeded generator), resize + center crop for evaluation. Workers default
    to min(4, CPU count); pinned memory only with CUDA; workers persist and prefetch."""
    root = Path(path)
    train_files, val_files = _splits(root, "--data")
    if image_size < 1:
        raise ConfigError("--image-size", [f"expected a positive number of pixels, got {image_size}"])
    workers = default_workers() if workers is None else workers
    opts: dict[str, Any] = {"num_workers": workers, "pin_memory": torch.cuda.is_available(), "collate_fn": _collate}
    if workers > 0:
        opts.update(persistent_workers=True, prefetch_factor=2)
    sampler = _SeededShuffle(len(train_files.samples), torch.Generator().manual_seed(seed))
    train = DataLoader(_Images(train_files, train_transform(image_size, channels), channels), batch_size=batch_size,
                       sampler=sampler, generator=torch.Generator().manual_seed(seed), **opts)
    val = DataLoader(_Images(val_files, eval_transform(image_size, channels), channels),
                     batch_size=eval_batch_size or batch_size, **opts)
    return FolderLoader(train, f"{root / 'train'}"), FolderLoader(val, f"{root / 'val'}")


def tree_identity(path: str | Path) -> str:
    """A cheap fingerprint of an image tree (what ``--resume`` compares): the sha256 of its sorted
    relative image paths and their sizes, not of every byte."""
    root = Path(path)
    h = hashlib.sha256()
    for p in sorted(p for p in root.rglob("*") if p.is_file() and is_image_file(p)):
        h.update(f"{p.relative_to(root).as_posix()}\0{p.stat().st_size}\n".encode())
    return h.hexdigest()


def calibration_root(path: Path, what: str = "--calib") -> Path:
    """Where calibration images come from: ``path/val`` if there is one, else ``path`` itself."""
    if not path.is_dir():
        raise ConfigError(what, [f"{path} {'does not exist' if not path.exists() else 'is not a folder'}; expected "
                                 "an image folder (its val/ subfolder if it has one, else its class folders)"])
    return path / "val" if (path / "val").is_dir() else path


def calibration_images(path: Path, n: int, what: str = "--calib") -> list[str]:
    """``n`` readable images spread evenly over the sorted files of ``calibration_root(path)`` (so
    over its classes), as paths relative to ``path``; an unreadable one is replaced by the next."""
    root = calibration_root(path, what)
    files = [p for p, _ in scan_folder(root, what).samples]
    if n < 1:
        raise ConfigError("--calib-images", [f"expected at least 1 image, got {n}"])
    chosen: list[Path] = []
    taken: set[int] = set()
    for i in range(n):
        j = i * len(files) // n
        while j < len(files) and (j in taken or not _readable(files[j])):
            j += 1
        if j == len(files):
            raise ConfigError("--calib-images", [f"{root} holds fewer than {n} readable images "
                                                 f"({len(files)} files); give a smaller --calib-images"])
        taken.add(j)
        chosen.append(files[j])
    return [p.relative_to(path).as_posix() for p in chosen]


def _readable(path: Path) -> bool:
    try:
        load_image(path)
    except read_errors():
        return False
    return True


def images_sha256(root: Path, files: Sequence[str]) -> str:
    """The sha256 of the named files' relative paths and bytes, in order."""
    h = hashlib.sha256()
    for rel in files:
        h.update(rel.encode() + b"\0")
        h.update((root / rel).read_bytes())
    return h.hexdigest()


def image_tensors(root: Path, files: Sequence[str], size: tuple[int, int], channels: int) -> list[torch.Tensor]:
    """The named images through the eval transform at ``size`` (H, W), each (1, C, H, W)."""
    t = eval_transform(size, channels)
    return [t(load_image(root / rel, channels)).unsqueeze(0) for rel in files]
