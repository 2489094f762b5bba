"""``tilesparse sparsify``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from tilesparse.cli.common import (
    JSON_HELP,
    PATTERN_HELP,
    SEED_MAX,
    SOURCE_HELP,
    WEIGHTS_HELP,
    block_arg,
    check_outputs,
    console,
    pattern_arg,
    sparsity_arg,
    write_json,
)
from tilesparse.errors import ConfigError

__all__ = ["register"]

DEFAULT_OUT = Path("runs")
OUT_FILES = ("sparse.pt", "last.pt", "report.txt", "report.json", "recipe.yaml", "metrics.csv",
             "metrics.jsonl")  # what OUT receives
RECIPE_HELP = "Recipe YAML (examples in src/tilesparse/recipes/). Flags below override it."
DATA_HELP = ("auto | digits | shapes | none | FILE.pt holding x_train, y_train, x_test, y_test tensors | an image "
             "FOLDER with train/ and val/ subfolders of class folders (torchvision ImageFolder layout; ImageNet "
             "transforms at --image-size; unreadable images skipped and counted). shapes = the built-in "
             "procedural 18-class 16x16 shapes (for shapes_cnn). auto = digits for digits_cnn, shapes for "
             "shapes_cnn, else none (choose masks only, no training).")
IMAGE_SIZE_HELP = "With an image --data folder: the side of the crops trained and evaluated on."
WORKERS_HELP = "With an image --data folder: DataLoader worker processes (default min(4, CPU count); 0 = none)."
_BUILT_IN_DATA = {"digits_cnn": "digits", "shapes_cnn": "shapes"}
RESUME_HELP = ("Continue from OUT/last.pt after an interruption, with its recipe (a flag or --recipe that "
               "differs from it is refused, naming the field).")
OVERRIDE_HELP = ("With --resume: continue with the flags' / recipe's new values (e.g. more --epochs), recorded in "
                 "the checkpoints and recipe.yaml. The pattern, method, layers and optimizer cannot change.")
_DATA_KEYS = ("x_train", "y_train", "x_test", "y_test")
NPROC_HELP = ("Train with N processes on this machine (DistributedDataParallel: gloo on CPU, nccl on CUDA; "
              "launches torchrun with the same arguments). Several machines: run `torchrun ... -m tilesparse "
              "sparsify ...` on each (docs/sparsify.md).")
AMP_HELP = "Mixed precision of the forward pass: none | bf16 (CPU or GPU) | fp16 (with loss scaling)."
ACCUMULATE_HELP = "Sum the gradients of K batches before each optimizer step (effective batch: K x batch size)."


def _recipe(recipe_path: Path | None, overrides: dict[str, Any], resumed=None):
    """The run's recipe: ``--recipe`` (else, on ``--resume``, the checkpoint's ``resumed``, else the
    defaults) with the flags over it."""
    from tilesparse.sparsify.recipe import Recipe

    base = Recipe.from_yaml(recipe_path) if recipe_path is not None else resumed or Recipe()
    data = base.model_dump(exclude_unset=True)  # what the recipe derived (sparsity, selection) follows the flags
    if overrides.get("pattern") is not None or overrides.get("block") is not None:
        data = {k: v for k, v in data.items() if k not in ("pattern", "block")}  # one spelling replaces the other
    training = dict(data.get("training") or {})
    for key in ("epochs", "lr", "seed", "batch_size", "amp", "accumulate"):
        if overrides.get(key) is not None:
            training[key] = overrides.pop(key)
    data.update({k: v for k, v in overrides.items() if v is not None}, training=training)
    if recipe_path is not None:
        return Recipe.from_dict(data, source=f"{recipe_path} + command line")
    try:
        return Recipe.from_dict(data, source="command line")
    except ConfigError as e:  # its fields are the flags: "training.batch_size: ..." -> "--batch-size: ..."
        flags = [f"--{field.rpartition('.')[2].replace('_', '-')}:{rest}" if rest and " " not in field else err
                 for err, (field, _, rest) in ((err, err.partition(":")) for err in e.errors)]
        raise ConfigError("command line", flags) from None


def _check_flags(sparsity: float | None, block: str | None, pattern: str | None) -> None:
    """--sparsity, --block and --pattern named in their own errors (the recipe would say 'command line')."""
    sparsity_arg(sparsity), block_arg(block), pattern_arg(pattern)
    if block is not None and pattern is not None:
        raise ConfigError("--block", [f"give --pattern {pattern} alone (--block is its older spelling for blocks)"])


def _device(name: str):
    import torch

    from tilesparse.errors import ConfigError

    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError("--device", [f"unknown device {name!r} (e.g. cpu, cuda, cuda:1, mps)"]) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device", [f"device {name!r} requested but CUDA is not available"])
    return dev


def _model(spec: str, weights: Path | None):
    """Model source -> (model with any saved masks baked in, the name its checkpoint records: a zoo
    name, the canonical file.py:factory, .pt2 or .onnx path, so that the checkpoint compiles on its own;
    for a user's file, its sha256 and the path as given, so that compile finds it moved and unchanged)."""
    from tilesparse.program.provenance import file_sha256
    from tilesparse.source import load_model, parse_source

    src = parse_source(spec, weights)
    lm = load_model(src)
    arch = lm.arch or ""
    model_file = arch.rpartition(":")[0] if ".py:" in arch else arch
    if not model_file.endswith((".py", ".pt2", ".onnx")):
        return lm.model, lm.arch, {}
    given = src.given if src.kind in ("file", "pt2", "onnx") else None
    return lm.model, lm.arch, {"model_sha256": file_sha256(model_file), "model_given": given}


def _data_kind(data: str, model_name: str | None) -> str:
    if data == "auto":
        return _BUILT_IN_DATA.get(model_name or "", "none")
    return data


def _data_identity(data: str) -> str | dict[str, str]:
    """What the checkpoint records of the data (--resume compares it): a data file by its sha256, an
    image folder by that of its sorted image names and sizes (cheap, not every byte)."""
    from tilesparse.program.provenance import file_sha256

    if data in ("digits", "shapes", "none"):
        return data
    if Path(data).is_dir():
        from tilesparse.data.folder import tree_identity

        return {"name": data, "sha256": tree_identity(data)}
    return {"name": data, "sha256": file_sha256(data)}


def _loaders(data: str, batch_size: int, seed: int, image_size: int = 224, workers: int | None = None,
             net=None):
    if data == "none":
        return None, None
    if data == "digits":
        from tilesparse.data.digits import digits_loaders

        return digits_loaders(batch_size, seed)
    if data == "shapes":
        from tilesparse.data.shapes import shapes_loaders

        return shapes_loaders(batch_size, seed)
    if Path(data).is_dir():
        from tilesparse.data.folder import folder_loaders

        return folder_loaders(data, batch_size, seed, image_size=image_size, workers=workers,
                              channels=_in_channels(net))
    return _tensor_file_loaders(Path(data), batch_size, seed)


def _in_channels(net) -> int:
    """The channels the model's first conv reads (1: grey images; else RGB)."""
    from torch import nn

    first = next((m for m in net.modules() if isinstance(m, nn.Conv2d)), None) if net is not None else None
    return 1 if first is not None and first.in_channels == 1 else 3


def _read_tensor_file(path: Path) -> dict:
    """A --data file's dict of tensors; ConfigError (one line, naming the file and what was expected)."""
    import torch

    from tilesparse.errors import ConfigError
    from tilesparse.utils.torchfile import TorchFileError, load_torch_file

    expected = f"a torch.save file of a dict with tensors {', '.join(_DATA_KEYS)}"
    if not path.is_file():
        raise ConfigError("--data", [f"expected 'digits', 'shapes', 'none', {expected}, or an image folder with "
                                     f"train/ and val/ subfolders; {path} does not exist"])
    try:
        d = load_torch_file(path)
    except TorchFileError as e:
        raise ConfigError("--data", [f"{path}: {e.reason}; expected {expected}"]) from None
    if not isinstance(d, dict):
        raise ConfigError("--data", [f"{path} holds a {type(d).__name__}; expected {expected}"])
    problems = [f"missing tensor {k!r}" if k not in d else f"{k!r} is a {type(d[k]).__name__}, not a tensor"
                for k in _DATA_KEYS if not isinstance(d.get(k), torch.Tensor)]
    if problems:
        raise ConfigError("--data", [f"{path}: {'; '.join(problems)}; expected {expected}"])
    sizes = {k: len(v) if v.dim() else 0 for k, v in d.items() if k in _DATA_KEYS}
    problems = [f"{x!r} has {sizes[x]} samples and {y!r} {sizes[y]}"
                for x, y in (_DATA_KEYS[:2], _DATA_KEYS[2:]) if sizes[x] != sizes[y] or not sizes[x]]
    if problems:
        raise ConfigError("--data", [f"{path}: {'; '.join(problems)}; expected the same number in each pair, at "
                                     "least 1"])
    return d


def _tensor_file_loaders(path: Path, batch_size: int, seed: int):
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    d = _read_tensor_file(path)
    gen = torch.Generator().manual_seed(seed)
    train = DataLoader(TensorDataset(d["x_train"], d["y_train"]), batch_size=batch_size, shuffle=True, generator=gen)
    return train, DataLoader(TensorDataset(d["x_test"], d["y_test"]), batch_size=batch_size)


def _train_dense(net, train, test, rec, epochs: int, lr: float, device, con, dist=None) -> None:
    from tilesparse.errors import ConfigError
    from tilesparse.sparsify.trainer import Trainer

    if train is None:
        raise ConfigError("--dense-epochs", ["dense training needs data (--data digits, shapes, a .pt file or an image "
                                             "folder)"])
    cfg = rec.training.model_copy(update={"epochs": epochs, "lr": lr})
    fit = Trainer(net, None, None, train, test, cfg, device=device, dist=dist).fit()
    if fit.final_accuracy is not None and (dist is None or dist.main):
        con.print(f"dense training: {epochs} epochs, accuracy {fit.final_accuracy:.2f} %")


def _resumed_recipe(out: Path, dist=None):
    """The recipe OUT/last.pt was trained with (None without one: the trainer says it cannot resume);
    across processes, as rank 0 reads it."""
    from tilesparse.sparsify.checkpoint import read_checkpoint
    from tilesparse.sparsify.recipe import Recipe
    from tilesparse.sparsify.trainer import LAST_CHECKPOINT

    def read():
        path = out / LAST_CHECKPOINT
        if not path.is_file():
            return None
        sp = read_checkpoint(path).get("sparsifier")
        return Recipe.from_dict(sp["recipe"], f"{path} (recipe)") if sp else None

    return read() if dist is None else dist.from_main(read)


def _launch(nproc: int) -> None:
    """Run this command in ``nproc`` processes through torchrun (single machine); exits with their code."""
    import sys

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    from tilesparse.sparsify.ddp import strip_nproc

    argv, _ = strip_nproc(sys.argv[1:])
    try:
        run(parse_args(["--standalone", "--nproc-per-node", str(nproc), "-m", "tilesparse", *argv]))
    except ChildFailedError as e:  # the processes printed their own error lines
        codes = [f.exitcode for f in e.failures.values()]
        raise typer.Exit(min((c for c in codes if c > 0), default=1)) from None


def _join(dev):
    """(this process's place in a torchrun job or None, its device)."""
    from tilesparse.sparsify.ddp import init_from_env

    dist = init_from_env(dev)
    return dist, (dist.device if dist is not None else dev)


def _run_settings(data: str, name: str | None, model_file: dict, image_size: int) -> dict[str, Any]:
    """What the checkpoints record besides the recipe, for --resume to compare: the data (an image
    folder with its crop size), and a model file by its sha256."""
    run: dict[str, Any] = {"data": _data_identity(data)}
    if Path(data).is_dir():
        run["image_size"] = image_size
    if model_file:
        run["model"] = {"name": name, "sha256": model_file["model_sha256"]}
    return run


def _write_outputs(out: Path, result, recipe, model_name: str | None, model_file: dict, run: dict) -> None:
    from tilesparse.sparsify.checkpoint import save_checkpoint
    from tilesparse.sparsify.resume import describe_overrides
    from tilesparse.utils.atomic import atomic_write_text

    save_checkpoint(out / "sparse.pt", result.model, result.sparsifier, model_name=model_name,
                    extra={"history": [h.__dict__ for h in result.fit.history],
                           "final_accuracy": result.fit.final_accuracy, "run": run,
                           "overrides": result.fit.overrides, **model_file})
    atomic_write_text(out / "report.txt", result.report.to_text() + "\n")
    atomic_write_text(out / "report.json", result.report.to_json() + "\n")
    notes = "".join(f"# {line}\n" for line in describe_overrides(result.fit.overrides))
    atomic_write_text(out / "recipe.yaml", notes + recipe.to_yaml())


def sparsify(
    model: Annotated[str, typer.Argument(help=SOURCE_HELP, metavar="SOURCE")],
    weights: Annotated[Optional[Path], typer.Option(help=WEIGHTS_HELP)] = None,
    recipe: Annotated[Optional[Path], typer.Option(help=RECIPE_HELP)] = None,
    method: Annotated[Optional[str], typer.Option(help="oneshot | incremental | penalty.")] = None,
    sparsity: Annotated[Optional[float], typer.Option(help="Target sparsity in [0, 1) (default: the pattern's "
                                                           "own, e.g. 0.5 for 2:4; 0.5 for blocks).")] = None,
    pattern: Annotated[Optional[str], typer.Option(help=PATTERN_HELP)] = None,
    block: Annotated[Optional[str], typer.Option(help="Block shape OUTxIN, e.g. 8x8 (same as --pattern 8x8).")
                     ] = None,
    selection: Annotated[Optional[str], typer.Option(help="layer | global | balanced_rows | balanced_cols.")] = None,
    score: Annotated[Optional[str], typer.Option(help="l1 | l2 | variance | taylor | fisher | hessian.")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Fine-tuning epochs (0: choose masks only).")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Fine-tuning learning rate.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed for data order and initialisation.",
                                                              min=0, max=SEED_MAX)] = None,
    data: Annotated[str, typer.Option(help=DATA_HELP)] = "auto",
    device: Annotated[str, typer.Option(help="torch device: cpu, cuda, cuda:1, mps ...")] = "cpu",
    resume: Annotated[bool, typer.Option("--resume", help=RESUME_HELP)] = False,
    override: Annotated[bool, typer.Option("--override", help=OVERRIDE_HELP)] = False,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output folder (default "
                                                "runs/MODEL-METHOD-SPARSITY).")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help=JSON_HELP + " The sparsity report.")] = None,
    bytes_per_weight: Annotated[int, typer.Option(help="Bytes per weight in the size report (1 = int8).")] = 1,
    dense_epochs: Annotated[int, typer.Option(help="Train the model dense for this many epochs first (needs data; "
                                                   "skipped on --resume).", min=0)] = 0,
    dense_lr: Annotated[float, typer.Option(help="Learning rate of the dense training.")] = 0.05,
    threads: Annotated[Optional[int], typer.Option(help="torch CPU threads (small models run faster on 1).",
                                                   min=1)] = None,
    image_size: Annotated[int, typer.Option(help=IMAGE_SIZE_HELP, min=1)] = 224,
    workers: Annotated[Optional[int], typer.Option(help=WORKERS_HELP, min=0)] = None,
    amp: Annotated[Optional[str], typer.Option(help=AMP_HELP)] = None,
    accumulate: Annotated[Optional[int], typer.Option(help=ACCUMULATE_HELP, min=1)] = None,
    nproc: Annotated[Optional[int], typer.Option(help=NPROC_HELP, min=1)] = None,
) -> None:
    """Sparsify a model to structured sparsity (8x8 blocks, 2:4, hierarchies ...) and fine-tune it.

    Writes OUT/sparse.pt (weights + masks + recipe), OUT/report.txt and report.json (per-layer units
    kept, sparsity, weight bytes dense vs compressed), OUT/recipe.yaml, and OUT/last.pt after every
    epoch (for --resume) with OUT/metrics.csv and metrics.jsonl (per-epoch loss, top-1/top-5, sparsity,
    learning rate, images/s: `tilesparse report OUT`). The checkpoint names its model source, so
    `tilesparse compile OUT/sparse.pt` compiles its trained masks.

    Examples:

    * `tilesparse sparsify digits_cnn --sparsity 0.5 --epochs 5 -o runs/d` (trains on the built-in digits)
    * `tilesparse sparsify resnet50 --sparsity 0.5 --pattern 8x8 -o runs/r50` (masks only: no data given)
    * `tilesparse sparsify digits_cnn --pattern 2:4 --method incremental --epochs 6` (2:4 on the reduction axis)
    * `tilesparse sparsify digits_cnn --pattern 8x8@0.5/2:4 --epochs 5` (HSS: 75 % sparse)
    * `tilesparse sparsify digits_cnn --pattern 2:4+1:4 --epochs 2` (TASD terms; int8-2:4+int4: SDQ parts)
    * `tilesparse sparsify shapes_cnn --dense-epochs 16 --pattern 2:4 --epochs 4` (the harder built-in shapes)
    * `tilesparse sparsify my_net.py:make --data data.pt --recipe src/tilesparse/recipes/penalty_lse.yaml`
    * `tilesparse sparsify resnet18 --data ~/imagenet --pattern 8x8 --epochs 10` (train/ and val/ image folders)
    * `tilesparse sparsify digits_cnn --epochs 5 --nproc 2 -o runs/d2` (two processes, DistributedDataParallel)
    """
    import os

    from tilesparse.patterns.composite import parse_composite

    comp = parse_composite(pattern) if pattern is not None else None
    if comp is not None:  # TASD terms / SDQ parts: their own path (cli.sparsify_composite)
        from tilesparse.cli.sparsify_composite import check_composite_flags

        check_composite_flags(comp.spec(), {"recipe": recipe, "method": method, "sparsity": sparsity, "block": block,
                                            "selection": selection, "score": score, "resume": resume,
                                            "override": override, "amp": amp, "accumulate": accumulate,
                                            "nproc": nproc})
        _composite_run(comp, model, weights, (data, image_size, workers), device, out, json_out,
                       {"epochs": epochs, "lr": lr, "seed": seed}, (dense_epochs, dense_lr))
        return
    if nproc is not None and nproc > 1 and "LOCAL_RANK" not in os.environ:
        _launch(nproc)
        return
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    _check_flags(sparsity, block, pattern)
    if out is not None:  # refused before the model is loaded; the default folder is checked once named
        check_outputs({"--json": json_out}, ("--out", out, OUT_FILES))
    if override and not resume:
        raise ConfigError("--override", ["only with --resume: it continues a run with changed settings"])
    flags = {"method": method, "sparsity": sparsity, "block": block, "pattern": pattern, "selection": selection,
             "score": score, "epochs": epochs, "lr": lr, "seed": seed, "amp": amp, "accumulate": accumulate}
    rec = _recipe(recipe, dict(flags))
    dist, dev = _join(_device(device))
    try:
        net, name, model_file = _model(model, weights)
        if out is None:
            out = DEFAULT_OUT / f"{_stem(name)}-{rec.method}-{rec.sparsity:g}"
            check_outputs({"--json": json_out}, ("--out", out, OUT_FILES))
        if resume and recipe is None:  # the flags given change the checkpoint's recipe, not the defaults
            rec = _recipe(None, dict(flags), _resumed_recipe(out, dist))
        _train_and_write(net, name, model_file, rec, (data, image_size, workers), dev, dist, out, json_out, resume,
                         override, (dense_epochs, dense_lr), bytes_per_weight)
    finally:
        if dist is not None:
            dist.close()


def _composite_run(comp, model: str, weights, data_opts: tuple[str, int, int | None], device: str, out: Path | None,
                   json_out: Path | None, train_opts: dict[str, Any], dense: tuple[int, float]) -> None:
    """`sparsify --pattern 2:4+1:4 | int8-2:4+int4`: decompose, fine-tune, write OUT/sparse.pt."""
    from tilesparse.cli.sparsify_composite import sparsify_composite
    from tilesparse.patterns.composite import TASDPattern
    from tilesparse.sparsify.recipe import Recipe, TrainingConfig
    from tilesparse.utils.config import validate_model

    cfg = validate_model(TrainingConfig, {k: v for k, v in train_opts.items() if v is not None}, "command line")
    if out is not None:
        check_outputs({"--json": json_out}, ("--out", out, OUT_FILES))
    net, name, model_file = _model(model, weights)
    if out is None:
        out = DEFAULT_OUT / f"{_stem(name)}-{'tasd' if isinstance(comp, TASDPattern) else 'sdq'}"
        check_outputs({"--json": json_out}, ("--out", out, OUT_FILES))
    data, image_size, workers = data_opts
    data = _data_kind(data, name)
    train, test = _loaders(data, cfg.batch_size, cfg.seed, image_size, workers, net)
    dev, con = _device(device), console(json_out)
    if dense[0]:
        _train_dense(net, train, test, Recipe(training=cfg), dense[0], dense[1], dev, con)
    res = sparsify_composite(comp, net, name, model_file, (train, test), cfg, out, dev)
    con.print(f"{res['pattern']}: {len(res['layers'])} layers ({', '.join(res['layers'])}), "
              f"{res['epochs']} epochs of fine-tuning", highlight=False, soft_wrap=True)
    for layer, why in res["skipped"].items():
        con.print(f"stays dense: {layer}: {why}", highlight=False, soft_wrap=True)
    if res["final_accuracy"] is not None:
        con.print(f"accuracy after:  {res['final_accuracy']:.2f} %")
    con.print(f"wrote {res['checkpoint']} (tilesparse compile {res['checkpoint']})", soft_wrap=True)
    write_json(json_out, res)


def _train_and_write(net, name, model_file, rec, data_opts: tuple[str, int, int | None], dev, dist, out: Path,
                     json_out: Path | None, resume: bool, override: bool, dense: tuple[int, float],
                     bytes_per_weight: int) -> None:
    """Train (every process), then write OUT and print the results (rank 0 alone). ``data_opts``:
    --data, --image-size, --workers."""
    from tilesparse.sparsify.run import sparsify_model

    main = dist is None or dist.main
    data, image_size, workers = data_opts
    data = _data_kind(data, name)
    train, test = _loaders(data, rec.training.batch_size, rec.training.seed, image_size, workers, net)
    run = _run_settings(data, name, model_file, image_size)
    con = console(json_out)
    if dense[0] and not resume:
        _train_dense(net, train, test, rec, dense[0], dense[1], dev, con, dist)
    result = sparsify_model(net, rec, train, test, device=dev, checkpoint_dir=out, resume=resume, model_name=name,
                            bytes_per_weight=bytes_per_weight, override=override, run=run, dist=dist,
                            progress=main)
    for loader in (train, test) if dist is not None else ():  # each process skipped the images of its shard
        if getattr(loader, "skipped", None) is not None:
            loader.skipped.update(dist.union(loader.skipped))
    if main:
        _write_outputs(out, result, rec, name, model_file, run)
        _print_results(con, result, out, json_out)
        _print_skipped(con, (train, test))


def _print_skipped(con, loaders) -> None:
    """How many unreadable images an image folder's loaders skipped (the first named)."""
    from rich.markup import escape

    for loader in loaders:
        skipped = getattr(loader, "skipped", None)
        if skipped:
            path, err = next(iter(skipped.items()))
            con.print(escape(f"skipped {len(skipped)} unreadable image(s) of {loader.where} (e.g. {path}: {err})"),
                      soft_wrap=True)


def _print_results(con, result, out: Path, json_out: Path | None) -> None:
    import json

    from tilesparse.sparsify.resume import describe_overrides

    con.print(result.report.to_text(), highlight=False, soft_wrap=True)
    for line in describe_overrides(result.fit.overrides):
        con.print(line, highlight=False, soft_wrap=True)
    if result.accuracy_before is not None:
        con.print(f"accuracy before: {result.accuracy_before:.2f} %")
    if result.fit.final_accuracy is not None:
        con.print(f"accuracy after:  {result.fit.final_accuracy:.2f} %")
    con.print(f"wrote {out}/sparse.pt, report.txt, report.json, recipe.yaml", soft_wrap=True)
    if result.fit.history:
        con.print(f"per-epoch records: {out}/metrics.csv, metrics.jsonl (tilesparse report {out})", soft_wrap=True)
    if json_out is not None:
        write_json(json_out, json.loads(result.report.to_json()))


def _stem(name: str | None) -> str:
    """A folder-name stem for a model name (file.py:factory gives its factory, a .pt2 / .onnx its file stem)."""
    if name and name.endswith((".pt2", ".onnx")):
        return Path(name).stem
    return (name or "model").rpartition(":")[2] or "model"


def register(app: typer.Typer) -> None:
    app.command("sparsify")(sparsify)
