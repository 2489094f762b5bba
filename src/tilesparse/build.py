"""The front door: model source → (pruned) model → graph → Program, with provenance.

Every verb, the Table II report, the demo and the test helpers go through ``build_graph_from`` /
``compile_source``:

    >>> prog = compile_source("resnet18", "4x4", sparsity=0.5, input_shape=(1, 3, 64, 64))  # doctest: +SKIP
    >>> provenance_of(prog).selection                                                        # doctest: +SKIP
    'l2-oneshot'

From Python an in-memory ``nn.Module`` is a source too (``source_kind`` "module"); such a program
records no file to rebuild it from, so it is verified in Python (``tilesparse.sim.verify``).

``graph_from_provenance`` rebuilds the graph a program was compiled from (refusing source files
whose hash changed), and ``check_request`` refuses flags that contradict a program's provenance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tilesparse.errors import ConfigError, ProvenanceError
from tilesparse.program.provenance import (
    TIME_MODEL,
    Provenance,
    file_sha256,
    package_version,
    set_provenance,
)
from tilesparse.source import LoadedModel, ModelSource, load_model, locate_file, parse_source, require_file
from tilesparse.utils.config import short_repr
from tilesparse.utils.limits import MAX_INPUT_ELEMENTS, above

__all__ = ["Built", "build_graph_from", "check_request", "compile_source", "graph_from_provenance",
           "locate_calibration", "locate_files", "not_rebuildable", "parse_input_shape"]

N_CALIB = 2  # random calibration inputs of the front end (frontend.build_graph's default)
N_CALIB_IMAGES = 16  # calibration images taken from a --calib folder by default
QUANTIZATION = "int8 power-of-two, per-tensor weights"
MODULE_WEIGHTS = "module-weights"  # selection of an unpruned module: its all-zero blocks are masked
CHECKPOINT_WEIGHTS = "checkpoint-weights"  # a checkpoint of another pattern (2:4, ...): its all-zero blocks


@dataclass
class Built:
    """A graph and the choices that made it (all but the array and balance of the provenance)."""

    graph: Any  # tilesparse.ir.graph.Graph
    source: ModelSource
    block: tuple[int, int]
    sparsity: float
    selection: str
    seed: int
    quantized: bool
    input_shape: tuple[int, ...]
    notices: list[str] = field(default_factory=list)  # one line each: a file found elsewhere than recorded
    calibration: str | None = None  # how the activation exponents were calibrated; None: random inputs
    calibration_images: dict[str, Any] | None = None  # the provenance's record of calibration images
    # the float nn.Module the graph was captured from, as captured (pruned or checkpoint-masked
    # weights, eval mode) — for a .pt2 the module lifted from the exported program — the second
    # oracle of ``tilesparse.sim.verify(..., module=)``; every source kind has one
    module: Any = None
    # the pattern the weights follow: "block" (block masks), a pattern spec pruned one-shot
    # ("2:4", "8x8@0.5/2:4") or the one a checkpoint was trained to
    pattern: str = "block"

    def provenance(self, array: str, balance: bool) -> Provenance:
        s = self.source
        return Provenance(
            source=s.spec, source_kind=s.kind, source_sha256=file_sha256(s.path) if s.path else None,
            weights=str(s.weights) if s.weights else None,
            weights_sha256=file_sha256(s.weights) if s.weights else None, pattern=self.pattern, block=self.block,
            sparsity=self.sparsity, selection=self.selection, seed=self.seed,
            quantization=QUANTIZATION if self.quantized else "none (float graph)",
            calibration=(self.calibration or f"random normal, n={N_CALIB}, seed={self.seed}") if self.quantized
            else "none",
            input_shape=self.input_shape, array=array, time_model=TIME_MODEL, balance=balance,
            version=package_version(), source_given=s.given, weights_given=s.given_weights,
            calibration_images=self.calibration_images if self.quantized else None)


def parse_input_shape(text: str | Sequence[int] | None, what: str = "--input-shape") -> tuple[int, ...] | None:
    """``"1,3,224,224"`` / ``"1x3x224x224"`` / a sequence -> tuple; None stays None."""
    if text is None:
        return None
    try:
        shape = tuple(int(x) for x in (text.replace("x", ",").split(",") if isinstance(text, str) else text))
    except (ValueError, TypeError):  # not numbers, or a number of thousands of digits
        shape = ()
    if len(shape) != 4 or min(shape) < 1:
        raise ConfigError(what, [f"expected N,C,H,W such as 1,3,224,224, got {short_repr(text, 60)}"])
    if math.prod(shape) > MAX_INPUT_ELEMENTS:
        raise ConfigError(what, [above("N x C x H x W", f"{math.prod(shape):,}", f"{MAX_INPUT_ELEMENTS:,}")])
    return shape


def _input_shape(lm: LoadedModel, src: ModelSource, given: tuple[int, ...] | None) -> tuple[int, ...]:
    if given is not None:
        return given
    if lm.example_shape is not None:
        return lm.example_shape
    if lm.zoo_name is not None:
        from tilesparse.frontend import default_input_shape

        return default_input_shape(lm.zoo_name)
    if src.kind == "onnx":
        raise ConfigError("--input-shape", [f"{src.spec}: the ONNX graph input has dynamic dimensions besides the "
                                            "batch (or is not N,C,H,W); give the input shape N,C,H,W"])
    raise ConfigError("--input-shape", [f"{src.spec}: give the input shape (N,C,H,W) for a {src.kind} source"])


def _choose(lm: LoadedModel, src: ModelSource, sparsity: float | None,
            block: str | tuple[int, int] | None) -> tuple[tuple[int, int], float, str]:
    """(block, sparsity, selection rule) of the request; a checkpoint's masks are never re-pruned."""
    b, sp = _request(sparsity, block)
    if lm.masks is None and lm.pattern is not None:  # trained to a pattern the compiler does not take natively
        if sp is not None:
            raise ConfigError("--sparsity", [f"{src.spec} carries trained {lm.pattern} weights; it is not pruned "
                                             f"again: drop --sparsity {sp:g}"])
        return b or (8, 8), 0.0, CHECKPOINT_WEIGHTS
    if lm.masks is None:
        sp = sp or 0.0
        unpruned = MODULE_WEIGHTS if src.kind == "module" else "none"
        return b or (8, 8), sp, "l2-oneshot" if sp > 0 else unpruned
    if sp is not None and not math.isclose(sp, lm.sparsity or 0.0):
        raise ConfigError("--sparsity", [f"{src.spec} carries trained masks (sparsity {lm.sparsity:g}); it is "
                                         f"not pruned again: drop --sparsity {sp:g}"])
    if b is not None and b != lm.block:
        raise ConfigError("--block", [f"{src.spec} carries {lm.block[0]}x{lm.block[1]} block masks; drop "
                                      f"--block {_show(b)}"])
    return lm.block, float(lm.sparsity or 0.0), "checkpoint-masks"


def _request(sparsity: Any, block: Any) -> tuple[tuple[int, int] | None, float | None]:
    """(block, sparsity) as asked, each checked by the one rule every verb uses (None: not asked)."""
    from tilesparse.patterns import check_block, check_sparsity

    return (None if block is None else check_block(block),
            None if sparsity is None else check_sparsity(sparsity, "--sparsity"))


def build_graph_from(source: str | ModelSource | Any, *, weights: str | Path | None = None,
                     sparsity: float | None = None, block: str | tuple[int, int] | None = None,
                     input_shape: str | Sequence[int] | None = None, quantized: bool = True,
                     seed: int = 0, calibration: Sequence[Any] | None = None, calib: str | Path | None = None,
                     calib_images: int = N_CALIB_IMAGES, calib_files: Sequence[str] | None = None,
                     pattern: Any = None) -> Built:
    """Source → model → one-shot pruning (``patterns.prune_oneshot``, unless the source carries
    masks) → front end. ``sparsity``/``block`` None: the source's own (dense, 8x8 for a model
    without masks).

    ``source`` may be an in-memory ``nn.Module`` (Python only; ``input_shape`` required): a deep
    copy of it is pruned and captured, so the caller's module is never modified; unpruned, its
    all-zero blocks are masked (``selection`` "module-weights", the masked fraction recorded).
    ``calibration`` (input arrays, module sources only: a program from a file must be rebuildable
    from its provenance) replaces the random calibration inputs. ``pattern`` (a spec such as
    ``"2:4"``, ``"8x8@0.5/2:4"``, or a ``Pattern``; not a block pattern, which is ``block`` +
    ``sparsity``): prune every layer but the first conv one-shot to it (``sparsity`` fills a free
    level); the compiler packs the layers that meet the sparse multiply's rule in its masked
    format (docs/compiler.md, "Weight formats")."""
    from tilesparse.frontend import build_graph
    from tilesparse.patterns import prune_oneshot, prune_pattern_oneshot

    _request(sparsity, block)  # a bad value refused before the model is loaded
    comp = _composite_request(pattern, sparsity, block)
    pat = _pattern_request(pattern, sparsity, block) if comp is None else None
    src, lm = _load(source, weights, seed, input_shape, calibration)
    comp, pat = _unless_carried(comp, pat, lm, src)
    sdq_cfg = _carried_sdq(lm)
    if comp is not None:
        bs, sp, rule = (8, 8), 0.0, "l2-oneshot"
        sdq_cfg = _composite_prune(lm, src, comp)
    elif pat is not None:
        if lm.masks is not None or lm.pattern is not None:
            raise ConfigError("--pattern", [f"{src.spec} carries trained {lm.pattern or 'block'} weights; it is not "
                                            f"pruned again: drop --pattern {pat.spec()}"])
        bs, sp, rule = (8, 8), float(pat.nominal_sparsity() or 0.0), "l2-oneshot"
        skipped = prune_pattern_oneshot(lm.model, pat, name=lm.name)
        lm.notices.extend(f"layer {n} stays dense: {why}" for n, why in skipped.items())
    else:
        bs, sp, rule = _choose(lm, src, sparsity, block)
    if rule == "l2-oneshot" and pat is None and comp is None:
        prune_oneshot(lm.model, sp, bs, name=lm.name)
    shape = _input_shape(lm, src, parse_input_shape(input_shape))
    g = build_graph(lm.model, input_shape=shape, block=bs, quantized=False, seed=seed)
    if lm.masks:
        g = _with_masks(g, lm.masks, src.spec)
    if rule in (MODULE_WEIGHTS, CHECKPOINT_WEIGHTS):
        sp = _masked_fraction(g)
    given = f"given: n={len(calibration)}" if calibration is not None else None
    record = None
    if calib is not None and quantized:
        calibration, record, given = _image_calibration(Path(calib), calib_images, calib_files, shape)
    if sdq_cfg is not None and not quantized:  # the parts exist only as integer codes
        quantized = True
        lm.notices.append(f"{sdq_cfg.spec()}: SDQ parts are integer codes; the model is quantized")
    if quantized:
        from tilesparse.frontend import random_calibration
        from tilesparse.quant import quantize

        g = quantize(g, list(calibration) if calibration is not None else random_calibration(shape, N_CALIB, seed),
                     sdq=sdq_cfg, exponents=getattr(lm.model, "qdq_exponents", None))  # QDQ scales
    pattern_spec = (comp or pat).spec() if (comp or pat) is not None else (
        str(lm.pattern) if lm.masks is None and lm.pattern else "block")
    return Built(g, src, bs, sp, rule, seed, quantized, shape, list(lm.notices), given, record, lm.model, pattern_spec)


def _unless_carried(comp: Any, pat: Any, lm: LoadedModel, src: ModelSource) -> tuple[Any, Any]:
    """The pattern asked for, (None, None) for a source that carries trained weights: the same
    pattern is compiled as carried, another one is refused naming the file and the field."""
    asked = comp or pat
    if asked is None or (lm.pattern is None and lm.masks is None):
        return comp, pat
    carried, asked = lm.pattern or "block", asked.spec()
    if asked != carried:
        fld = "composite.pattern" if lm.composite is not None else "sparsifier.recipe.pattern"
        raise ConfigError("--pattern", [f"{src.spec}: field {fld} is {carried}, --pattern {asked} disagrees; the "
                                        f"checkpoint compiles with the pattern it was trained to: drop --pattern"])
    return None, None


def _carried_sdq(lm: LoadedModel):
    """The ``SDQConfig`` of an SDQ checkpoint: its layers with their trained parts; None otherwise."""
    from tilesparse.patterns.composite import SDQPattern
    from tilesparse.quant.sdq_graph import SDQConfig

    c = lm.composite
    if c is None or not isinstance(c.pattern, SDQPattern):
        return None
    p = c.pattern
    return SDQConfig(p.sparse, p.sparse_bits, p.dense_bits, tuple(c.parts), given=dict(c.parts))


def _composite_request(pattern: Any, sparsity: float | None, block: Any):
    """The TASD / SDQ pattern asked for (``patterns.composite``), None if ``pattern`` is not one."""
    from tilesparse.patterns.composite import SDQPattern, TASDPattern, parse_composite

    comp = parse_composite(pattern) if isinstance(pattern, str) else (
        pattern if isinstance(pattern, (TASDPattern, SDQPattern)) else None)
    if comp is not None and (block is not None or sparsity is not None):
        raise ConfigError("--pattern", [f"{comp.spec()} fixes every part's sparsity; drop --block / --sparsity"])
    return comp


def _composite_prune(lm: LoadedModel, src: ModelSource, comp: Any):
    """TASD: decompose and squash the model's layers in place (notices for those left dense). SDQ:
    the ``SDQConfig`` the quantizer splits every conv / linear with."""
    from tilesparse.patterns.composite import TASDPattern
    from tilesparse.quant.sdq_graph import SDQConfig

    if lm.masks is not None or lm.pattern is not None:
        raise ConfigError("--pattern", [f"{src.spec} carries trained {lm.pattern or 'block'} weights; it is not "
                                        f"pruned again: drop --pattern {comp.spec()}"])
    if isinstance(comp, TASDPattern):
        lm.notices.extend(_tasd_oneshot(lm.model, comp))
        return None
    return SDQConfig(comp.sparse, comp.sparse_bits, comp.dense_bits, ("*",))


def _tasd_oneshot(model, comp) -> list[str]:
    """Decompose every conv / linear but the first conv into ``comp``'s terms (``sparsify.tasd_model``)
    and squash them into one weight (the sum); notices for the layers that stay dense."""
    from tilesparse.sparsify import squash_terms, tasd_model

    report = tasd_model(model, list(comp.terms), layer_types=("conv", "linear"))
    squash_terms(model)
    return [f"layer {n} stays dense: {why}" for n, why in report.skipped.items()]


def _pattern_request(pattern: Any, sparsity: float | None, block: Any):
    """The non-block ``Pattern`` asked for, its free level filled by ``sparsity`` (None: none asked;
    a block pattern is given as ``block`` and ``sparsity``)."""
    if pattern is None or pattern == "block":
        return None
    from tilesparse.patterns import Block, as_pattern

    p = as_pattern(pattern, "--pattern")
    if isinstance(p, Block):
        raise ConfigError("--pattern", [f"{p.spec()}: give a block pattern as block={p.out}x{p.in_} and sparsity"])
    if block is not None:
        raise ConfigError("--block", [f"--pattern {p.spec()} sets the weights' structure; drop --block"])
    if p.free_levels() and sparsity is None:
        raise ConfigError("--pattern", [f"{p.spec()} leaves a level's sparsity free; give --sparsity or '@s'"])
    return p.with_sparsity(sparsity) if p.free_levels() or sparsity is not None else p


def _image_calibration(folder: Path, n: int, files: Sequence[str] | None, shape: tuple[int, ...]
                       ) -> tuple[list[Any], dict[str, Any], str]:
    """(inputs, provenance record, description) of ``n`` images of ``folder`` (or ``files``)
    through the eval transform at the input's height and width."""
    from tilesparse.data.folder import calibration_images, eval_transform_name, image_tensors, images_sha256

    if shape[1] not in (1, 3):
        raise ConfigError("--calib", [f"{folder}: images give 1 (grey) or 3 (RGB) channels; the model reads "
                                      f"{shape[1]} (input shape {_show(shape)})"])
    chosen = list(files) if files is not None else calibration_images(folder, n)
    inputs = [t.numpy() for t in image_tensors(folder, chosen, (shape[2], shape[3]), shape[1])]
    record = {"path": str(folder.resolve()), "given": str(folder), "files": chosen,
              "sha256": images_sha256(folder, chosen)}
    return inputs, record, f"images: n={len(chosen)} from {folder}, {eval_transform_name((shape[2], shape[3]))}"


def _load(source: Any, weights: str | Path | None, seed: int, input_shape: Any,
          calibration: Sequence[Any] | None) -> tuple[ModelSource, LoadedModel]:
    """(source, loaded model): a parsed spec loaded, or a deep copy of an in-memory module."""
    import copy

    from torch import nn

    if not isinstance(source, nn.Module):
        src = source if isinstance(source, ModelSource) else parse_source(source, weights)
        if calibration is not None:
            raise ConfigError("calibration", [f"{src.spec}: calibration inputs are taken with an in-memory model "
                                              "only (a program compiled from a file is rebuilt from its provenance)"])
        return src, load_model(src, seed)
    name = type(source).__name__
    if weights is not None:
        raise ConfigError("weights", [f"an in-memory model ({name}) carries its own weights; drop weights="])
    if input_shape is None:
        raise ConfigError("input_shape", [f"an in-memory model ({name}): give input_shape=(N, C, H, W)"])
    if calibration is not None and not len(calibration):
        raise ConfigError("calibration", [f"{name}: an empty list of calibration inputs; give at least one"])
    return ModelSource(name, "module"), LoadedModel(copy.deepcopy(source).to("cpu").eval(), name, None)


def _masked_fraction(g) -> float:
    """Fraction of masked blocks over the sparsifiable layers (what an unpruned module brings)."""
    from tilesparse.passes import sparsifiable_layers

    masks = [g.params[f"{n}.mask"] for n in sparsifiable_layers(g)]
    total = sum(m.size for m in masks)
    return math.floor(1e4 * float(sum((~m).sum() for m in masks)) / total) / 1e4 if total else 0.0


def _with_masks(g, masks: dict[str, Any], where: str):
    """The graph with its block masks set to the checkpoint's (the kept blocks are exactly the
    trained ones, even a kept block whose weights happen to be zero)."""
    import numpy as np

    from tilesparse.ir.graph import Graph, Op

    params = dict(g.params)
    node_of = {n.source: n.name for n in g.of(Op.CONV2D, Op.LINEAR) if n.source}  # module path -> node
    for name, keep in masks.items():
        key = f"{node_of.get(name, name.replace('.', '_'))}.mask"
        if key not in params:
            raise ConfigError(where, [f"masked layer {name!r} has no conv in the captured graph"])
        keep = np.asarray(keep.cpu().numpy(), dtype=bool)
        if keep.shape != params[key].shape or (params[key] & ~keep).any():
            raise ConfigError(where, [f"layer {name!r}: mask {keep.shape} does not fit the weights "
                                      f"(graph mask {params[key].shape})"])
        params[key] = keep
    return Graph(g.nodes, params, g.name)


def compile_source(source: str | ModelSource | Any, array: Any = "4x4", *, balance: bool = True, chooser=None,
                   notices: list[str] | None = None, **build_kwargs: Any):
    """``build_graph_from`` then ``compile_graph``; the Program carries its provenance. The
    build's notices (a file found elsewhere than recorded) are appended to ``notices``.
    ``source`` may be an in-memory ``nn.Module`` (give ``input_shape``; it is not modified)."""
    from tilesparse.compiler.pipeline import compile_graph
    from tilesparse.hw import load_array

    hw = load_array(array)
    built = build_graph_from(source, **build_kwargs)
    if notices is not None:
        notices.extend(built.notices)
    prog = compile_graph(built.graph, hw, chooser=chooser, balance=balance)
    set_provenance(prog, built.provenance(hw.label, balance))
    return prog


def locate_files(prov: Provenance, where: str, model: str | None = None,
                 weights: str | Path | None = None) -> tuple[str, str | None, list[str]]:
    """(source spec, weights path, notices) to rebuild ``prov`` from: each file at its recorded
    absolute path, else at ``model`` / ``weights`` (named again by the user), else as written at
    compile (relative to the working directory), else under the same name next to the program file
    ``where`` — always with the recorded sha256. A file found nowhere with that hash is a
    ``ProvenanceError`` naming where it looked."""
    named_weights, source, weights, notes = weights, prov.source, prov.weights, []
    path = _source_path(prov)
    if path is not None and prov.source_sha256 is not None:
        named = parse_source(model).path if model is not None else None
        found, note = locate_file("source", path, [(named, "given with --model"), (prov.source_given, _AS_GIVEN)],
                              prov.source_sha256, where)
        factory = prov.source.rpartition(":")[2]
        source = f"{found}:{factory}" if prov.source_kind == "file" else str(found)
        notes += [note] * bool(note)
    if prov.weights is not None and prov.weights_sha256 is not None:
        others = [(named_weights, "given with --weights"), (prov.weights_given, _AS_GIVEN)]
        found, note = locate_file("weights", prov.weights, others, prov.weights_sha256, where)
        weights = str(found)
        notes += [note] * bool(note)
    return source, weights, notes


_AS_GIVEN = "as given at compile, from this folder"


def _source_path(prov: Provenance) -> str | None:
    if prov.source_kind == "zoo":
        return None
    return prov.source.rpartition(":")[0] if prov.source_kind == "file" else prov.source


def graph_from_provenance(prov: Provenance, where: str = "program", notices: list[str] | None = None,
                          model: str | None = None, weights: str | Path | None = None,
                          calib: str | Path | None = None) -> Built:
    """Rebuild the graph ``prov`` describes (same source, pruning, input shape, quantization,
    calibration images), from files found by ``locate_files`` and ``locate_calibration``; its
    notices are appended to ``notices``. A program compiled from an in-memory model is a
    ``ProvenanceError`` (``not_rebuildable``)."""
    if prov.source_kind == "module":
        raise ProvenanceError(f"{where}: {not_rebuildable(prov)}")
    source, weights, notes = locate_files(prov, where, model, weights)
    images = prov.calibration_images if prov.quantized else None
    folder = None
    if images is not None:
        folder, note = locate_calibration(images, where, calib)
        notes += [note] * bool(note)
    elif calib is not None:
        raise ConfigError("--calib", [f"{where} was calibrated on {prov.calibration}, not on images; drop --calib "
                                      f"{calib}, or compile again with it"])
    oneshot_pattern = prov.selection == "l2-oneshot" and prov.pattern != "block"
    built = build_graph_from(source, weights=weights,
                             sparsity=prov.sparsity if prov.selection == "l2-oneshot" and not oneshot_pattern else None,
                             block=None if oneshot_pattern else prov.block, input_shape=prov.input_shape,
                             quantized=prov.quantized, seed=prov.seed, calib=folder,
                             calib_files=images["files"] if images else None,
                             pattern=prov.pattern if oneshot_pattern else None)
    if notices is not None:
        notices.extend(notes + built.notices)
    return built


def locate_calibration(images: dict[str, Any], where: str, named: str | Path | None = None
                       ) -> tuple[Path, str]:
    """(folder, notice) holding a program's calibration images with their recorded sha256: the
    folder named again (``--calib``), else the recorded absolute path, else the path as given at
    compile (from the working directory). ``ProvenanceError`` if none has them unchanged."""
    from tilesparse.data.folder import images_sha256

    recorded, n = Path(images["path"]), len(images["files"])
    places: dict[Path, tuple[Path, str]] = {}
    for place, why in ((named, "given with --calib"), (recorded, ""), (images["given"], _AS_GIVEN)):
        if place is not None and Path(place).is_dir():
            places.setdefault(Path(place).resolve(), (Path(place), why))
    changed = None
    for place, why in places.values():
        try:
            sha = images_sha256(place, images["files"])
        except OSError as e:
            sha = f"{Path(e.filename or '').name or 'an image'} unreadable: {e.strerror or e}"
        if sha == images["sha256"]:
            return place, f"calibration images not at {recorded}; using {place} ({why}, same sha256)" * bool(why)
        changed = changed or (place, sha if " " in sha else f"sha256 {sha[:12]}…")
    if changed is not None:
        raise ProvenanceError(f"the {n} calibration images of {where} changed in {changed[0]} ({changed[1]}; {where} "
                              f"was compiled from sha256 {images['sha256'][:12]}…); restore them, or compile again "
                              f"with --calib {changed[0]}")
    raise ProvenanceError(f"{where} was calibrated on {n} images of {recorded}, which no longer exists; give its "
                          "new place with --calib DIR, or compile again")


def not_rebuildable(prov: Provenance) -> str:
    """Why a program compiled from an in-memory model cannot be verified from its provenance."""
    return (f"compiled from an in-memory model ({prov.source}): nothing to rebuild it from; verify it in Python "
            "with tilesparse.sim.verify(program, graph, x)")


def check_request(prov: Provenance, where: str, **given: Any) -> None:
    """Refuse any given flag (not None) that contradicts the provenance, naming both values and
    what to do instead. Keys: source, weights, sparsity, block, pattern, input_shape, calib_images, array."""
    for flag, recorded, same, raw in _requested(prov, given):
        if not same:
            raise ProvenanceError(f"{flag} {raw} contradicts the provenance of {where} "
                                  f"({_FIELD.get(flag, flag[2:])} {recorded}); drop {flag} to use {where} as "
                                  f"compiled, {_next_step(prov, flag, raw)}")


# flag -> provenance field, where they differ
_FIELD = {"--model": "source", "--input-shape": "input_shape", "--calib-images": "calibration images"}


def _requested(prov: Provenance, given: dict[str, Any]):
    """(flag, recorded value as shown, whether the request agrees, value as the user wrote it) for
    every given flag; a value that is invalid in itself is a ``ConfigError`` first."""
    from tilesparse.patterns import check_block, check_sparsity

    g = {k: v for k, v in given.items() if v is not None}
    if "source" in g:
        yield "--model", prov.source, _same_source(prov, parse_source(g["source"])), g["source"]
    if "weights" in g:
        path = require_file(Path(g["weights"]), "weights file")
        yield "--weights", prov.weights, prov.weights_sha256 == file_sha256(path), g["weights"]
    if "sparsity" in g:
        sp = check_sparsity(g["sparsity"], "--sparsity")
        yield "--sparsity", _show(prov.sparsity), math.isclose(sp, prov.sparsity), f"{g['sparsity']:g}"
    if "block" in g:
        yield "--block", _show(prov.block), check_block(g["block"], "--block") == prov.block, g["block"]
    if "pattern" in g:
        from tilesparse.patterns import as_pattern

        yield "--pattern", prov.pattern, as_pattern(g["pattern"], "--pattern").spec() == prov.pattern, g["pattern"]
    if "input_shape" in g:
        shape = parse_input_shape(g["input_shape"])
        yield "--input-shape", _show(prov.input_shape), shape == prov.input_shape, g["input_shape"]
    if "calib_images" in g:
        n = len(prov.calibration_images["files"]) if prov.calibration_images else None
        yield "--calib-images", n if n else f"none: {prov.calibration}", n == g["calib_images"], g["calib_images"]
    if "array" in g:
        from tilesparse.hw import load_array

        yield "--array", prov.array, load_array(g["array"]).label == prov.array, g["array"]


def _same_source(prov: Provenance, src: ModelSource) -> bool:
    """Same zoo name, or the same file contents (and factory): a moved file is still the source."""
    if src.kind != prov.source_kind:
        return False
    if src.kind == "zoo":
        return src.spec == prov.source
    same_factory = src.factory is None or src.factory == prov.source.rpartition(":")[2]
    return same_factory and src.path is not None and file_sha256(src.path) == prov.source_sha256


def _next_step(prov: Provenance, flag: str, raw: str) -> str:
    """What to run instead: a compile with the requested value, or new masks for a checkpoint's."""
    if prov.selection == "checkpoint-masks" and flag in ("--sparsity", "--block"):
        return (f"or train masks for it first (tilesparse sparsify {prov.source} {flag} {raw} -o runs/new) "
                "and compile that checkpoint")
    opts: dict[str, str | None] = {
        "--weights": prov.weights, "--sparsity": _show(prov.sparsity) if prov.selection == "l2-oneshot" else None,
        "--block": _show(prov.block) if prov.block != (8, 8) and prov.selection == "l2-oneshot" else None,
        "--input-shape": _show(prov.input_shape) if prov.source_kind == "file" else None, "-a": prov.array,
        "--calib": prov.calibration_images["given"] if prov.calibration_images else None}
    if flag == "--calib-images" and not prov.calibration_images:
        opts["--calib"] = "DIR"
    if prov.source_kind == "module" and flag != "--model":
        return f"or compile the model again in Python (tilesparse.build.compile_source) with {flag} {raw}"
    source = prov.source
    if flag == "--model":
        source, opts = raw, {"-a": prov.array}
    else:
        opts[{"--array": "-a"}.get(flag, flag)] = raw
    args = " ".join(f"{k} {v}" for k, v in opts.items() if v is not None)
    return f"or compile a program for it first: tilesparse compile {source} {args} -o new.tsp"


def _show(v: Any) -> str:
    if isinstance(v, tuple):
        return ("x" if len(v) == 2 else ",").join(str(x) for x in v)
    return f"{v:g}" if isinstance(v, float) else str(v)
