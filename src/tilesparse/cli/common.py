"""What every verb shares: the help texts of the common options, the console, JSON output, and
telling a program file from a model source. Kept free of torch so ``tilesparse --help`` is fast."""

from __future__ import annotations

import json
import os
import stat
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tilesparse.errors import ConfigError
from tilesparse.source import SOURCE_FORMS

__all__ = ["ARRAY_HELP", "BLOCK_HELP", "BLOCK_PATTERN_HELP", "COMPILE_PATTERN_HELP", "INPUT_SHAPE_HELP", "JSON_HELP",
           "PATTERN_HELP",
           "SEED_MAX", "SOURCE_HELP", "SPARSITY_HELP", "WEIGHTS_HELP", "array_arg", "block_arg", "block_pattern_args",
           "compile_pattern_args",
           "check_outputs", "console", "is_program_file", "pattern_arg", "read_program", "sparsity_arg", "write_json"]

SOURCE_HELP = f"Model source: {SOURCE_FORMS}."  # the one list of the forms (tilesparse.source)
ARRAY_HELP = ("Array: RxC (rows x columns, e.g. 4x4, 5x7, 8x2), base-RxC, phoenix, strix, npu1 (Phoenix/Hawk "
              "Point at its driver clock), npu2 (Strix, AIE-ML v2), or a YAML file.")
SPARSITY_HELP = ("Zero this fraction of lowest-L2 blocks in every conv/linear but the first (0 = dense; a "
                 "checkpoint's masks are used as trained).")
BLOCK_HELP = "Block shape OUTxIN (default 8x8, or the checkpoint's)."
INPUT_SHAPE_HELP = "N,C,H,W (default: the zoo model's, a .pt2's example input, or an .onnx file's graph input)."
WEIGHTS_HELP = "State-dict file (or tilesparse checkpoint) for a zoo name (else random weights, seed 0)."
CALIB_HELP = ("Image folder for int8 calibration (its val/ subfolder if it has one, else its class folders): "
              "--calib-images of its images, resized and center-cropped to the model's input (ImageNet "
              "normalisation), instead of random inputs; recorded in the program's provenance.")
CALIB_IMAGES_HELP = "How many images of --calib to calibrate on (spread evenly over its classes)."
RULES_HELP = ("Timing rule profile: tilesparse (ours, the default), paper (the paper's rules read literally), "
              "measured (ours plus figures measured on NPUs); docs/time-model.md, 'Profiles'.")
JSON_HELP = "Write machine-readable results as JSON to this path ('-' = stdout)."
SEED_MAX = 2**32 - 1  # numpy's legacy generators and scikit-learn take seeds in [0, 2**32)

_WIDE = 1000  # columns of a console that is not a terminal: tables never cut a layer name


def console(json_out: str | Path | None = None):
    """A rich Console for the verbs' output; piped to a file it is wide enough that no table column
    is truncated (a terminal keeps its own width). With ``--json -`` the human-readable output goes
    to stderr, so that stdout carries the JSON alone."""
    from rich.console import Console

    stream = sys.stderr if str(json_out) == "-" else sys.stdout
    return Console(file=stream) if stream.isatty() else Console(file=stream, width=_WIDE)


def write_json(path: str | Path | None, data: Any) -> None:
    """``--json PATH``: write ``data`` there atomically, or to stdout for '-'; nothing for None."""
    if path is None:
        return
    text = json.dumps(data, indent=1, default=str)
    if str(path) == "-":
        print(text)
        return
    from tilesparse.utils.atomic import atomic_write_text

    atomic_write_text(path, text + "\n")


def is_program_file(target: str) -> bool:
    """A Program (``tilesparse compile``'s .tsp), not a model source: by suffix, or an .npz archive
    holding a program header (a torch checkpoint is a zip file too, without one)."""
    from tilesparse.utils.config import is_file

    p = Path(target)
    if p.suffix in (".tsp", ".npz"):
        return True
    if not is_file(p) or not zipfile.is_zipfile(p):
        return False
    with zipfile.ZipFile(p) as z:
        return "header.npy" in z.namelist()


def read_program(target: str, hw: Any = None):
    """``Program.load`` of a program file named on the command line (a folder is named as one)."""
    from tilesparse.errors import ProgramError
    from tilesparse.program import Program
    from tilesparse.utils.config import clip

    try:
        folder = Path(target).is_dir()
    except (OSError, ValueError) as e:  # a name the OS refuses (too long, a NUL byte): never echoed whole
        raise ProgramError(f"{clip(target, 60)}: not a usable file name ({getattr(e, 'strerror', None) or e})"
                           ) from None
    if folder:
        raise ProgramError(f"{target}: is a folder, expected a program file from `tilesparse compile`")
    return Program.load(target, hw=hw)


def array_arg(spec: str | None, flag: str = "--array"):
    """The ``ArrayConfig`` of an ``--array`` value (None stays None); its error names the flag."""
    if spec is None:
        return None
    from tilesparse.errors import ConfigError
    from tilesparse.hw import load_array
    from tilesparse.hw.array import SHOWN_CHARS
    from tilesparse.utils.config import clip

    try:
        return load_array(spec)
    except ConfigError as e:
        if e.source != clip(str(spec), SHOWN_CHARS):  # a YAML file: its own name says where
            raise
        raise ConfigError(f"{flag} {e.source}", e.errors) from None


def block_arg(spec: str | None, flag: str = "--block") -> tuple[int, int] | None:
    """(out, in) of a ``--block`` value such as ``8x8`` (None stays None); its error names the flag
    (``patterns.check_block``, the one check of every verb)."""
    if spec is None:
        return None
    from tilesparse.patterns import check_block

    return check_block(spec, flag)


PATTERN_HELP = ("Sparsity pattern: 8x8 (blocks OUTxIN), 2:4 (N kept of every M input channels; 2:4:out along "
                "outputs), channel, filter, unstructured, a hierarchy of levels joined by '/' outermost first "
                "(8x8@0.5/2:4: half the 8x8 blocks, 2:4 inside each; 75 % sparse), or a YAML file. '@s' fixes "
                "a level's sparsity; a level without it takes --sparsity. Composite: TASD terms 2:4+1:4 or SDQ "
                "parts int8-2:4+int4, fine-tuned with their masks fixed (sparsify only).")


def pattern_arg(spec: str | None, flag: str = "--pattern"):
    """The Pattern of a ``--pattern`` value (None stays None); its error names the flag."""
    if spec is None:
        return None
    from tilesparse.patterns import parse_pattern

    try:
        return parse_pattern(spec, flag)
    except ConfigError as e:
        if e.source == flag:
            raise
        raise ConfigError(flag, [f"{e.source}: {err}" for err in e.errors]) from None


COMPILE_PATTERN_HELP = ("Sparsity pattern to prune to one-shot (lowest magnitude, every layer but the first conv): "
                        "blocks 8x8, 4x16, 8x8@0.5 ('@s' = --sparsity); N:M 2:4, 1:4 (N kept of every M input "
                        "channels: packed in the sparse multiply's masked format, twice the MAC rate); hierarchies "
                        "8x8@0.5/2:4; TASD terms 2:4+1:4 (compiled squashed); SDQ int8-2:4+int4 (an int8 2:4 part "
                        "plus an int4 part in one COMP). A checkpoint compiles with the pattern it was trained to "
                        "(TASD terms and SDQ parts included); --pattern, if given, must name that one.")


BLOCK_PATTERN_HELP = ("Sparsity pattern; this verb takes block patterns: 8x8, 4x16, 8x8@0.5 ('@s' = --sparsity). "
                      "N:M and hierarchies (2:4, 8x8@0.5/2:4): `tilesparse compile / estimate / simulate --pattern`, "
                      "or train them with `tilesparse sparsify --pattern` and compile the checkpoint.")


def block_pattern_args(pattern: str | None, block: str | None, sparsity: float | None
                       ) -> tuple[str | None, float | None]:
    """(--block, --sparsity) of a verb that compiles, from its ``--pattern`` (None: as given)."""
    if pattern is None:
        return block, sparsity
    from tilesparse.patterns import Block

    if block is not None:
        raise ConfigError("--block", [f"give --pattern {pattern} alone (--block is its older spelling for blocks)"])
    p = pattern_arg(pattern)
    if not isinstance(p, Block):
        raise ConfigError("--pattern", [
            f"{p.spec()}: this verb takes block patterns (8x8, 8x8@0.5); `tilesparse compile SOURCE --pattern "
            f"{p.spec()}` prunes to it one-shot, `tilesparse sparsify SOURCE --pattern {p.spec()} -o runs/x` trains it "
            "(compile runs/x/sparse.pt)"])
    if p.sparsity is not None and sparsity is not None and abs(p.sparsity - sparsity) > 1e-12:
        raise ConfigError("--pattern", [f"{p.spec()} says sparsity {p.sparsity:g}, --sparsity says {sparsity:g}; "
                                        "give one"])
    return f"{p.out}x{p.in_}", p.sparsity if p.sparsity is not None else sparsity


def compile_pattern_args(pattern: str | None, block: str | None, sparsity: float | None
                         ) -> tuple[str | None, float | None, str | None]:
    """(--block, --sparsity, non-block pattern spec) of a verb that compiles: a block pattern
    becomes --block and --sparsity (``block_pattern_args``); any other (2:4, 8x8@0.5/2:4) is
    returned as its spec, its free level filled by --sparsity."""
    from tilesparse.patterns import Block
    from tilesparse.patterns.composite import parse_composite

    try:
        comp = parse_composite(pattern)
    except ConfigError as e:
        raise ConfigError("--pattern", e.errors) from None
    if comp is not None:  # TASD (2:4+1:4) or SDQ (int8-2:4+int4): every part fixes its sparsity
        if block is not None or sparsity is not None:
            raise ConfigError("--pattern", [f"{comp.spec()} fixes every part's sparsity; drop --block / --sparsity"])
        return None, None, comp.spec()
    p = pattern_arg(pattern)
    if p is None or isinstance(p, Block):
        return (*block_pattern_args(pattern, block, sparsity), None)
    if block is not None:
        raise ConfigError("--block", [f"--pattern {p.spec()} sets the weights' structure; drop --block"])
    if p.free_levels() and sparsity is None:
        raise ConfigError("--pattern", [f"{p.spec()} leaves a level's sparsity free; give --sparsity or '@s' "
                                        f"(e.g. {p.with_sparsity(0.75).spec() if len(p.levels()) > 1 else '8x8@0.5'})"])
    try:
        filled = p.with_sparsity(sparsity)
    except ConfigError as e:
        raise ConfigError("--pattern", [f"{e.source}: {err}" for err in e.errors]) from None
    return None, None, filled.spec()


def rules_arg(name: str, flag: str = "--rules"):
    """The ``RuleProfile`` called ``name``; a usage error naming the flag and the profiles."""
    from tilesparse.hw import get_profile
    from tilesparse.utils.config import clip

    try:
        return get_profile(name)
    except ValueError as e:
        raise ConfigError(f"{flag} {clip(name, 40)}", [str(e)]) from None


def sparsity_arg(value: float | None, flag: str = "--sparsity") -> float | None:
    """A ``--sparsity`` value checked (``patterns.check_sparsity``, the one rule of every verb:
    a number in [0, 1), never nan); None stays None."""
    if value is None:
        return None
    from tilesparse.patterns import check_sparsity

    return check_sparsity(value, flag)


STDOUT = "-"  # --json / --listing: write to stdout


def check_outputs(files: Mapping[str, str | Path | None],
                  folder: tuple[str, str | Path | None, Iterable[str]] | None = None) -> None:
    """Refuse, before any work, outputs that could not be written: a folder where a file is meant,
    a file where a folder is meant (on the path, or as a ``folder`` output), a device, a place the
    system will not let us write, or two outputs naming one file. ``files`` maps each writing
    option to its path (None and '-' skipped); ``folder`` is (option, folder, the file names written
    in it). Every output is checked before any is written, so a refusal leaves nothing behind."""
    from tilesparse.errors import ConfigError

    targets = []
    if folder is not None and folder[1] is not None:
        flag, where, names = folder[0], Path(folder[1]), tuple(folder[2])
        is_file = where.exists() and not where.is_dir()
        if problem := "is a file, expected a folder" if is_file else _folder_problem(where):
            raise ConfigError(f"{flag} {folder[1]}", [problem])
        targets += [(flag, str(folder[1]), where / name) for name in names]
    targets += [(flag, str(p), Path(p)) for flag, p in files.items() if p is not None and str(p) != STDOUT]
    seen: dict[str, str] = {}
    for flag, given, path in targets:
        if problem := _file_problem(path, flag):
            raise ConfigError(f"{flag} {given}", [problem if str(path) == given else f"{path}: {problem}"])
        key = os.path.realpath(path)
        if key in seen and seen[key] != flag:
            raise ConfigError(f"{flag} {given}", [f"the same file as {seen[key]}; give each output its own name"])
        seen.setdefault(key, flag)


def _file_problem(path: Path, flag: str) -> str | None:
    """Why ``path`` cannot be written as a file (atomically: a new file renamed over it), or None."""
    if path.is_dir():
        return "is a folder, expected a file name"
    if path.exists() and not stat.S_ISREG(path.stat().st_mode):
        to_stdout = " (or '-' for stdout)" if flag in ("--json", "--listing") else ""
        return f"is a device or pipe, not a regular file; give a file name{to_stdout}"
    return _folder_problem(path.parent)


def _folder_problem(folder: Path) -> str | None:
    """Why files cannot be written in ``folder`` (made with its parents if missing), or None."""
    here = folder
    while not here.exists():  # the nearest existing ancestor decides: the rest are made there
        if here.is_symlink():
            return f"{here} is a broken symbolic link"
        here = here.parent
    if not here.is_dir():
        return f"{here} is a file, not a folder"
    try:  # ask the system itself: permissions, read-only file systems, root's exceptions alike
        with tempfile.TemporaryFile(dir=here):
            pass
    except OSError as e:
        return f"cannot write in {here} ({(e.strerror or str(e)).lower()})"
    return None
