"""``tilesparse import-masks``: a model pruned by another tool, as a tilesparse checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from tilesparse.cli.common import JSON_HELP, check_outputs, console, pattern_arg, write_json
from tilesparse.errors import ConfigError

__all__ = ["register"]

IMPORT_SOURCE_HELP = ("The model's architecture: a zoo name (resnet50, digits_cnn, any torchvision classifier) or "
                      "path/to/file.py:factory (factory() returns the nn.Module). Its weights come from FILE.")
FILE_HELP = ("The other tool's torch.save file: the model's state dict (ASP: with its '<layer>.__weight_mma_mask' "
             "buffers; torch.ao: the prepared model's, with --masks, or the squashed model's; zeros: any pruned "
             "state dict). Nested under 'state_dict' / 'model' and DDP's 'module.' prefix are read too.")
FORMAT_HELP = ("asp | torch-ao | zeros | auto. asp: NVIDIA ASP's mask buffers. torch-ao: torch.ao.pruning's "
               "parametrized weights with --masks. zeros: the masks are the weights' zeros. auto: asp if the "
               "file has ASP buffers, torch-ao if it has parametrized weights or --masks is given, else zeros.")
MASKS_HELP = ("torch.ao's sparsifier.state_dict() file ({'state': {'<layer>.weight': {'mask': ...}}, 'groups': "
              "[...]}), or a file mapping '<layer>.weight' to masks; torch.ao keeps its masks out of the model's "
              "state dict.")
IMPORT_PATTERN_HELP = ("The pattern every mask must obey (e.g. 2:4, 8x8, unstructured; --help of sparsify has the "
                       "grammar); a mask that breaks it is refused, naming the layer. Default: the file's own "
                       "(torch.ao's group settings, ASP's 2:4), else the first of 2:4, 8x8, unstructured that "
                       "every mask obeys. A free level takes the masks' sparsity.")
_SOURCE_KINDS = ("zoo", "file")


def _model(spec: str):
    """(un-pruned model, the name its checkpoint records, the model file's sha256 and path as given)."""
    from tilesparse.program.provenance import file_sha256
    from tilesparse.source import load_model, parse_source

    src = parse_source(spec)
    if src.kind not in _SOURCE_KINDS:
        raise ConfigError(spec, [f"is a {src.kind} source; import-masks needs the architecture alone: a zoo name or "
                                 "path/to/file.py:factory (the weights come from FILE)"])
    lm = load_model(src)
    if src.kind == "zoo":
        return lm.model, lm.arch, {}
    assert src.path is not None  # a file source
    return lm.model, lm.arch, {"model_sha256": file_sha256(src.path), "model_given": src.given}


AO_STATE_HINT = ("torch.ao's sparsifier.state_dict() holds a collections.defaultdict, which a safe load "
                 "(weights_only, no code run) cannot read; save it as a plain dict: sd = sparsifier.state_dict(); "
                 "torch.save({'state': dict(sd['state']), 'groups': sd['groups']}, PATH)")


def _read(path: Path, what: str):
    """A torch.save file, loaded safely; torch.ao's sparsifier state saved as is gets its remedy."""
    from tilesparse.source import require_file
    from tilesparse.utils.torchfile import TorchFileError, load_torch_file

    path = require_file(path, what)
    try:
        return load_torch_file(path)
    except TorchFileError:
        if _pickles_a_defaultdict(path):
            raise ConfigError(str(path), [AO_STATE_HINT]) from None
        raise


def _pickles_a_defaultdict(path: Path) -> bool:
    """Does the archive's pickle name collections.defaultdict? (read as bytes, never unpickled)"""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("data.pkl") and b"defaultdict" in z.read(n) for n in z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def import_masks(
    source: Annotated[str, typer.Argument(help=IMPORT_SOURCE_HELP, metavar="SOURCE")],
    file: Annotated[Path, typer.Argument(help=FILE_HELP, metavar="FILE")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Checkpoint to write (e.g. imported.pt).")],
    fmt: Annotated[str, typer.Option("--format", help=FORMAT_HELP)] = "auto",
    masks: Annotated[Optional[Path], typer.Option(help=MASKS_HELP)] = None,
    pattern: Annotated[Optional[str], typer.Option(help=IMPORT_PATTERN_HELP)] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help=JSON_HELP + " The sparsity report.")] = None,
) -> None:
    """Bring a model pruned by another tool (NVIDIA ASP, torch.ao.pruning, or any state dict whose zeros
    are the pruning) here as a tilesparse checkpoint, its masks checked against a pattern.

    Layers without a mask (or whose mask keeps every weight) stay dense; the per-layer report says which.
    `tilesparse compile OUT` then compiles the imported masks.

    Examples:

    * `tilesparse import-masks resnet50 asp_resnet50.pt -o r50.pt` (ASP's 2:4 masks, found by their buffers)
    * `tilesparse import-masks net.py:make model.pt --masks sparsifier.pt -o net.pt` (torch.ao, before squash_mask)
    * `tilesparse import-masks net.py:make squashed.pt --format zeros --pattern 2:4 -o net.pt`
    * `tilesparse import-masks digits_cnn pruned.pt --format zeros --pattern 8x8 -o d.pt` (blocks, checked whole)
    """
    from tilesparse.sparsify.checkpoint import save_checkpoint
    from tilesparse.sparsify.importing import FORMATS
    from tilesparse.sparsify.importing import import_masks as run_import
    from tilesparse.sparsify.report import build_report

    if fmt not in (*FORMATS, "auto"):
        raise ConfigError("--format", [f"expected {' | '.join(FORMATS)} | auto, got {fmt!r}"])
    chosen = pattern_arg(pattern)
    check_outputs({"--out": out, "--json": json_out})
    state = _read(file, "state-dict file")
    masks_state = None if masks is None else _read(masks, "masks file (--masks)")
    net, name, model_file = _model(source)
    imported = run_import(net, state, fmt, chosen, masks_state, source=str(file),
                          masks_source=f"--masks {masks}")
    extra = {"imported": {"format": imported.format, "file": str(file),
                          "masks": None if masks is None else str(masks)}, **model_file}
    save_checkpoint(out, imported.model, imported.sparsifier, model_name=name, extra=extra)
    report = build_report(imported.model, imported.sparsifier)
    con = console(json_out)
    con.print(report.to_text(), highlight=False, soft_wrap=True)
    n_dense = len(imported.dense)
    con.print(f"imported {len(imported.sparsifier.layers)} masks ({imported.format}, pattern "
              f"{imported.pattern.spec()}); {n_dense} layer{'s' * (n_dense != 1)} dense; wrote {out}",
              highlight=False, soft_wrap=True)
    write_json(json_out, report.to_dict())


def register(app: typer.Typer) -> None:
    app.command("import-masks")(import_masks)
