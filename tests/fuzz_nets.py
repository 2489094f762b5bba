"""Random small networks for differential fuzzing (tests/test_fuzz.py, benchmarks/fuzz_graphs.py).

A network is drawn as Python *source* (an ``nn.Module`` subclass) plus the build choices (array,
block, sparsity, seed): the source is what is executed, so a failing example's source is its
reproduction, ready to be pasted into a regression test. One drawing function, ``draw_case``,
serves two sources of randomness: a Hypothesis ``data`` object (``cases()``, the suite's strategy,
which shrinks toward fewer, simpler ops) and a seeded ``random.Random`` (``random_case``, the
benchmark's: example ``i`` of seed ``S`` is the same on every run, so runs resume and split over
processes).

Drawn: Conv2d (kernels 1-5, rectangular, strides, dilations, padding incl. ``"same"``, groups,
depthwise, bias or not), BatchNorm2d with non-trivial statistics, ReLU / ReLU6 / Hardtanh(0, 6) in
module, functional, method and in-place forms, max / average pools (padding, ceil mode,
dilation, ``count_include_pad``), adaptive average pools, dropout / identity, residual adds (``+``,
``+=``, ``torch.add``, ``x.add``), channel concats of two or three tensors (a tensor may appear
twice), and a head of flatten (four spellings) + Linear(s). Values form a DAG: an op reads any
live earlier value, and the dangling ones are merged (add / concat) before the head.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

T = TypeVar("T")

MAX_C = 16  # channels a conv produces (MAX_WIDE now and then); concats may reach MAX_CAT
MAX_WIDE = 48
MAX_CAT = 64
MAX_HW = 24
MAX_FLAT = 1024  # flatten + linear only below this many features
BLOCK_SIZES = (1, 2, 3, 4, 8, 16)
MAX_ARRAY = 4  # rows and columns: 1x1 ... 4x4
MAX_OPS = 10


class Draw:
    """The randomness a drawing needs; subclassed for Hypothesis and for ``random.Random``."""

    def int(self, lo: int, hi: int) -> int:
        raise NotImplementedError

    def choice(self, seq: Sequence[T]) -> T:
        return seq[self.int(0, len(seq) - 1)]

    def chance(self, p: float) -> bool:
        """True with probability ``p``; shrinks (Hypothesis) toward False."""
        return self.int(0, 999) >= round(1000 * (1 - p))

    def weighted(self, table: Sequence[tuple[T, float]]) -> T:
        total = sum(w for _, w in table)
        r = self.int(0, 999) * total / 1000
        for item, w in table:
            if r < w:
                return item
            r -= w
        return table[-1][0]


class RandomDraw(Draw):
    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def int(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)


class HypothesisDraw(Draw):
    """Over a Hypothesis draw function (``st.composite``'s ``draw`` or ``st.data().draw``)."""

    def __init__(self, draw_fn: Callable[[Any], Any]):
        from hypothesis import strategies as st

        self.draw_fn, self.st = draw_fn, st

    def int(self, lo: int, hi: int) -> int:
        return int(self.draw_fn(self.st.integers(lo, hi)))


@dataclass
class Value:
    name: str
    shape: tuple[int, ...]  # (C, H, W), or (N,) after a flatten
    live: bool = True  # False once an in-place op changed it (safe mode) or the head consumed it
    readers: int = 0
    storage: str = ""  # the value whose memory this one is (identity ops, views and in-place results alias)


@dataclass
class Case:
    """One drawn example: the module source and the build choices."""

    source: str
    input_shape: tuple[int, int, int, int]
    array: tuple[int, int]
    block: tuple[int, int]
    sparsity: float
    seed: int
    memory: dict[str, dict[str, int]] = field(default_factory=dict)  # hw overrides: {"core": {...}, ...}
    balance: bool = True
    features: Counter = field(default_factory=Counter)

    @property
    def array_spec(self) -> str:
        return f"{self.array[0]}x{self.array[1]}"

    def hw(self):
        """The array: the ``array_spec`` preset with the drawn memory sizes (validated)."""
        from tilesparse.hw import ArrayConfig, load_array

        base = load_array(self.array_spec).model_dump()
        for part, fields in self.memory.items():
            base[part] = {**base[part], **fields}
        return ArrayConfig.model_validate(base)

    def describe(self) -> str:
        """The whole example as text: build choices, then the module source."""
        return (f"# input_shape={self.input_shape} array={self.array_spec} memory={self.memory} "
                f"balance={self.balance} block={self.block} sparsity={self.sparsity} seed={self.seed}\n"
                f"{self.source}")


class _Net:
    """Grows the source of one network: ``init`` and ``forward`` lines, a value table."""

    def __init__(self, d: Draw, c: int, h: int, w: int, inplace_reuse: bool, cat_height: bool):
        self.d, self.inplace_reuse, self.cat_height = d, inplace_reuse, cat_height
        self.init: list[str] = []
        self.fwd: list[str] = []
        self.values = [Value("x", (c, h, w), storage="x")]
        self.feat: Counter = Counter()
        self.n_mod = 0

    # -- bookkeeping ---------------------------------------------------------------------------

    def module(self, text: str) -> str:
        self.n_mod += 1
        self.init.append(f"self.m{self.n_mod} = {text}")
        return f"self.m{self.n_mod}"

    def new(self, expr: str, shape: tuple[int, ...], *reads: Value, alias: Value | None = None) -> Value:
        for r in reads:
            r.readers += 1
        name = f"v{len(self.values)}"
        v = Value(name, shape, storage=alias.storage if alias is not None else name)
        self.fwd.append(f"{v.name} = {expr}")
        self.values.append(v)
        return v

    def mutated(self, v: Value, result: Value) -> None:
        """``v`` was changed in place (``result`` is the changed tensor): later readers of ``v``
        or of anything sharing its memory would see the new values (PyTorch's semantics; a capture
        that misses it computes another function). Unless drawing such reuse on purpose, nobody
        reads them again."""
        if not self.inplace_reuse:
            for u in self.values:
                if u.storage == v.storage and u is not result:
                    u.live = False
        self.feat["inplace"] += 1

    def live4(self) -> list[Value]:
        return [v for v in self.values if v.live and len(v.shape) == 3]

    def pick(self, pool: list[Value]) -> Value:
        """Mostly the newest value (chains), else any (a DAG)."""
        return pool[-1] if self.d.chance(0.55) else self.d.choice(pool)

    # -- ops -------------------------------------------------------------------------------------

    def conv(self, src: Value, co: int | None = None, keep_hw: bool = False) -> Value:
        args, shape = self._conv_args(src, co, keep_hw)
        return self.new(f"{self.module(f'nn.Conv2d({args})')}({src.name})", shape, src)

    def conv_block(self, src: Value) -> Value:
        """torchvision's idiom: ``nn.Sequential(conv, batch-norm, ReLU(inplace=True))`` as one module."""
        args, shape = self._conv_args(src, None, False)
        act = self.d.choice(("nn.ReLU(inplace=True)", "nn.ReLU6(inplace=True)", "nn.ReLU()"))
        self.feat["batchnorm"] += 1
        self.feat["sequential conv-bn-act"] += 1
        m = self.module(f"nn.Sequential(nn.Conv2d({args}), nn.BatchNorm2d({shape[0]}), {act})")
        return self.new(f"{m}({src.name})", shape, src)

    def _conv_args(self, src: Value, co: int | None, keep_hw: bool) -> tuple[str, tuple[int, ...]]:
        d, (c, h, w) = self.d, src.shape
        k = (d.int(1, 5), d.int(1, 5)) if d.chance(0.2) else (d.choice((1, 1, 2, 3, 3, 5)),) * 2
        dil = (d.int(2, 3),) * 2 if d.chance(0.15) else (1, 1)
        stride = (1, 1) if keep_hw else ((d.int(2, 3),) * 2 if d.chance(0.25) else (1, 1))
        if keep_hw:  # a residual / concat branch: same H, W (odd extents, symmetric padding)
            k = tuple(x if x % 2 else x + 1 for x in k)
            pad: Any = tuple(di * (x - 1) // 2 for di, x in zip(dil, k, strict=True))
        else:
            pad = tuple(d.int(0, di * (x - 1) // 2 + 1) for di, x in zip(dil, k, strict=True))
        ext = [di * (x - 1) + 1 for di, x in zip(dil, k, strict=True)]
        if any(e > s + 2 * p for e, s, p in zip(ext, (h, w), pad, strict=True)):
            k, dil, pad = (1, 1), (1, 1), (0, 0)
        groups, co = self._groups(c, co)
        same = keep_hw and stride == (1, 1) and d.chance(0.2)
        bias = d.chance(0.6)
        args = f"{c}, {co}, {k if k[0] != k[1] else k[0]}, stride={stride[0]}, padding=" + (
            "'same'" if same else f"{pad if pad[0] != pad[1] else pad[0]}")
        args += f", dilation={dil[0]}" * (dil != (1, 1)) + f", groups={groups}" * (groups > 1) + ", bias=False" * (
            not bias)
        self._conv_features(k, stride, dil, groups, c, co, pad, same)
        return args, _conv_shape(src.shape, co, k, stride, pad, dil, groups)

    def _groups(self, c: int, co: int | None) -> tuple[int, int]:
        d = self.d
        if d.chance(0.15):  # depthwise (channel multiplier 1 or 2)
            return c, co if co is not None and co % c == 0 else c * (2 if d.chance(0.25) and c <= MAX_C // 2 else 1)
        g = d.choice([x for x in range(1, c + 1) if c % x == 0]) if d.chance(0.2) else 1
        if co is None:  # now and then a wide layer (input-channel chunks, several oc chunks)
            co = g * d.int(1, max(1, (MAX_WIDE if d.chance(0.1) else MAX_C) // g))
        if co % g:
            g = math.gcd(g, co)
        return g, co

    def _conv_features(self, k, stride, dil, groups, c, co, pad, same) -> None:
        f = self.feat
        f["conv"] += 1
        f[f"conv k={k[0]}x{k[1]}"] += 1
        f["conv > 16 channels"] += max(c, co) > MAX_C
        f["conv stride>1"] += stride != (1, 1)
        f["conv dilation>1"] += dil != (1, 1)
        f["conv groups>1 (not depthwise)"] += 1 < groups < c
        f["conv depthwise"] += groups == c > 1
        f["conv padding>0"] += any(pad) and not same
        f["conv padding='same'"] += same
        f["conv rectangular kernel"] += k[0] != k[1]

    def batchnorm(self, src: Value) -> Value:
        affine = self.d.chance(0.85)
        m = self.module(f"nn.BatchNorm2d({src.shape[0]}{', affine=False' * (not affine)})")
        self.feat["batchnorm"] += 1
        return self.new(f"{m}({src.name})", src.shape, src)

    ACTS = (("nn.ReLU()", "relu"), ("nn.ReLU(inplace=True)", "relu in-place"), ("F.relu({})", "relu"),
            ("torch.relu({})", "relu"), ("{}.relu()", "relu"), ("{}.relu_()", "relu in-place"),
            ("F.relu({}, inplace=True)", "relu in-place"), ("nn.ReLU6()", "relu6"),
            ("nn.ReLU6(inplace=True)", "relu6 in-place"), ("F.relu6({})", "relu6"),
            ("nn.Hardtanh(0.0, 6.0)", "relu6"), ("F.hardtanh({}, 0.0, 6.0)", "relu6"))

    def act(self, src: Value) -> Value:
        form, kind = self.d.choice(self.ACTS)
        self.feat[f"act {kind}"] += 1
        expr = f"{self.module(form)}({src.name})" if form.startswith("nn.") else form.format(src.name)
        inplace = "in-place" in kind
        v = self.new(expr, src.shape, src, alias=src if inplace else None)
        if inplace:
            self.mutated(src, v)
        return v

    def maxpool(self, src: Value) -> Value:
        d = self.d
        k = d.int(1, 3)
        s = d.choice((None, 1, 2, 3))
        p = d.int(0, k // 2)
        dil = 2 if d.chance(0.15) else 1
        ceil = d.chance(0.3)
        args = f"{k}, stride={s}, padding={p}" + f", dilation={dil}" * (dil > 1) + ", ceil_mode=True" * ceil
        shape = _meta_shape(src.shape, lambda x: F.max_pool2d(x, k, s, p, dil, ceil))
        if shape is None:
            return self.conv(src)
        self._pool_features("maxpool", k, s, p, ceil, dil > 1)
        return self.new(self._pool_expr(src, "MaxPool2d", "max_pool2d", args), shape, src)

    def avgpool(self, src: Value) -> Value:
        d = self.d
        k, s, p = d.int(1, 3), d.choice((None, 1, 2, 3)), 0
        p = d.int(0, k // 2)
        ceil, incl = d.chance(0.3), not d.chance(0.3)
        args = f"{k}, stride={s}, padding={p}" + ", ceil_mode=True" * ceil + ", count_include_pad=False" * (not incl)
        shape = _meta_shape(src.shape, lambda x: F.avg_pool2d(x, k, s, p, ceil, incl))
        if shape is None:
            return self.conv(src)
        self._pool_features("avgpool", k, s, p, ceil, False)
        self.feat["avgpool count_include_pad=False"] += not incl and p > 0
        return self.new(self._pool_expr(src, "AvgPool2d", "avg_pool2d", args), shape, src)

    def _pool_expr(self, src: Value, cls: str, fn: str, args: str) -> str:
        if self.d.chance(0.5):
            return f"{self.module(f'nn.{cls}({args})')}({src.name})"
        return f"F.{fn}({src.name}, {args})"

    def _pool_features(self, kind: str, k: int, s: int | None, p: int, ceil: bool, dil: bool) -> None:
        f = self.feat
        f[kind] += 1
        f[f"{kind} k={k}"] += 1
        f[f"{kind} stride!=kernel"] += s is not None and s != k
        f[f"{kind} padding>0"] += p > 0
        f[f"{kind} ceil_mode"] += ceil
        f[f"{kind} dilation>1"] += dil

    def adaptive(self, src: Value, size: tuple[int, int] | None = None) -> Value:
        c, h, w = src.shape
        if size is None:
            divs = [(a, b) for a in _divisors(h) for b in _divisors(w)]
            size = self.d.choice(divs) if not self.d.chance(0.2) else (1, 1)
        self.feat["adaptive avgpool"] += 1
        self.feat["adaptive avgpool to 1x1"] += size == (1, 1)
        arg = size[0] if size[0] == size[1] else size
        expr = (f"{self.module(f'nn.AdaptiveAvgPool2d({arg})')}({src.name})" if self.d.chance(0.5)
                else f"F.adaptive_avg_pool2d({src.name}, {arg})")
        return self.new(expr, (c, *size), src)

    def identity(self, src: Value) -> Value:
        forms = ("nn.Dropout(0.3)", "nn.Identity()", "F.dropout({}, 0.5, self.training)", "nn.Dropout2d(0.2)")
        form = self.d.choice(forms if len(src.shape) == 3 else forms[:3])
        self.feat["dropout/identity"] += 1
        expr = f"{self.module(form)}({src.name})" if form.startswith("nn.") else form.format(src.name)
        return self.new(expr, src.shape, src, alias=src)  # eval-mode dropout and Identity return their input

    def add(self, a: Value, b: Value) -> Value:
        form = self.d.choice(("{a} + {b}", "torch.add({a}, {b})", "{a}.add({b})", "iadd"))
        self.feat["add"] += 1
        self.feat["add of a tensor to itself"] += a is b
        if form == "iadd":  # ``a += b``: the name ``a`` now holds the sum (ResNet's ``out += identity``)
            self.feat["add in-place (+=)"] += 1
            a.readers += 1
            b.readers += 1
            self.fwd.append(f"{a.name} += {b.name}")
            v = Value(f"v{len(self.values)}", a.shape, storage=a.storage)
            self.fwd.append(f"{v.name} = {a.name}")
            self.values.append(v)
            self.mutated(a, v)
            return v
        return self.new(form.format(a=a.name, b=b.name), a.shape, a, b)

    def cat(self, parts: list[Value], dim: int = 1) -> Value:
        form = self.d.choice(("torch.cat([{}], {dim})", "torch.cat(({}), dim={dim})", "torch.concat([{}], dim={dim})"))
        names = ", ".join(p.name for p in parts) + ("," if len(parts) == 1 else "")
        shape = list(parts[0].shape)
        shape[dim - 1] = sum(p.shape[dim - 1] for p in parts)
        self.feat["concat" if dim == 1 else "concat along height"] += 1
        self.feat[f"concat of {len(parts)}"] += 1
        self.feat["concat repeats an operand"] += len({p.name for p in parts}) < len(parts)
        return self.new(form.format(names, dim=dim), tuple(shape), *parts)

    # -- composite steps -------------------------------------------------------------------------

    def step(self) -> None:
        kind = self.d.weighted((("conv", 4), ("block", 1), ("bn", 2), ("act", 3), ("maxpool", 1.5), ("avgpool", 1),
                                ("adaptive", 0.5), ("add", 2), ("cat", 1.5), ("identity", 0.3), ("dead", 0.2)))
        src = self.pick(self.live4())
        if kind == "dead":  # computed, never read: the output does not depend on it
            readers = src.readers
            v = self.act(self.conv(src)) if self.d.chance(0.5) else self.conv(src)
            v.live, src.readers = False, readers  # reading src for nothing does not consume it
            self.feat["dead code"] += 1
        elif kind == "add":
            self.residual(src)
        elif kind == "cat":
            self.concat(src)
        elif kind == "adaptive" and src.shape[1] * src.shape[2] > 1:
            self.adaptive(src)
        else:
            ops = dict(conv=self.conv, block=self.conv_block, bn=self.batchnorm, act=self.act, maxpool=self.maxpool,
                       avgpool=self.avgpool, identity=self.identity, adaptive=self.conv)
            ops[kind](src)

    def residual(self, src: Value) -> None:
        """``src + other`` for a live value of the same shape, else ``src + branch(src)``."""
        same = [v for v in self.live4() if v.shape == src.shape and v is not src]
        if same and self.d.chance(0.6):
            other = self.d.choice(same)
        elif self.d.chance(0.08):
            other = src
        else:
            other = self.conv(src, co=src.shape[0], keep_hw=True)
            if self.d.chance(0.5):
                other = self.act(self.batchnorm(other)) if self.d.chance(0.5) else self.batchnorm(other)
        self.add(src, other)

    def concat(self, src: Value) -> None:
        if self.cat_height and self.d.chance(0.1):
            same = [v for v in self.live4() if v.shape[0] == src.shape[0] and v.shape[2] == src.shape[2]]
            self.cat([src, self.d.choice(same)], dim=2)
            return
        same = [v for v in self.live4() if v.shape[1:] == src.shape[1:] and v is not src]
        parts = [src]
        for _ in range(self.d.int(1, 2)):
            if self.d.chance(0.1):
                parts.append(self.d.choice(parts))
            elif same and self.d.chance(0.6):
                parts.append(self.d.choice(same))
            else:
                parts.append(self.conv(src, keep_hw=True))
        if sum(p.shape[0] for p in parts) <= MAX_CAT:
            self.cat(parts)

    def merge_dangling(self) -> Value:
        """Add / concat the unread values into one (pooling both to a common size first)."""
        while True:
            dangling = [v for v in self.live4() if v.readers == 0]
            if len(dangling) == 1:
                return dangling[0]
            a, b = dangling[-1], dangling[-2]
            if a.shape == b.shape and self.d.chance(0.5):
                self.add(a, b)
                continue
            if a.shape[1:] != b.shape[1:]:
                size = (math.gcd(a.shape[1], b.shape[1]), math.gcd(a.shape[2], b.shape[2]))
                a, b = (self.adaptive(v, size) if v.shape[1:] != size else v for v in (a, b))
            if a.shape[0] + b.shape[0] > MAX_CAT:
                a = self.conv(a, co=4, keep_hw=True)
            self.cat([a, b])

    def head(self, src: Value) -> Value:
        d = self.d
        kind = d.weighted((("none", 3), ("linear", 3), ("pool+linear", 2), ("flatten", 0.5)))
        if kind == "none":
            return src
        if kind == "pool+linear" or math.prod(src.shape) > MAX_FLAT:
            src = self.adaptive(src, (1, 1))
        v = self.flatten(src)
        if kind == "flatten":
            return v
        for i in range(d.int(1, 2)):
            if i and d.chance(0.5):
                v = self.act(v) if d.chance(0.7) else self.identity(v)
            n_out = d.int(1, 16)
            bias = d.chance(0.8)
            m = self.module(f"nn.Linear({v.shape[0]}, {n_out}{', bias=False' * (not bias)})")
            self.feat["linear"] += 1
            v = self.new(f"{m}({v.name})", (n_out,), v)
        return v

    def flatten(self, src: Value) -> Value:
        form = self.d.choice(("torch.flatten({}, 1)", "{0}.view({0}.size(0), -1)", "{0}.reshape({0}.shape[0], -1)",
                              "nn.Flatten()", "{}.flatten(1)"))
        self.feat["flatten"] += 1
        expr = f"{self.module(form)}({src.name})" if form.startswith("nn.") else form.format(src.name)
        src.live = False
        return self.new(expr, (math.prod(src.shape),), src, alias=src)

    def source(self, out: Value) -> str:
        init = "\n".join(f"        {line}" for line in self.init) or "        pass"
        fwd = "\n".join(f"        {line}" for line in self.fwd)
        return (f"class FuzzNet(nn.Module):\n    def __init__(self):\n        super().__init__()\n{init}\n\n"
                f"    def forward(self, x):\n{fwd}\n        return {out.name}\n")


def draw_case(d: Draw, *, inplace_reuse: bool = True, cat_height: bool = True) -> Case:
    """One example. ``inplace_reuse``: values changed in place may be read again; ``cat_height``:
    concats along the height axis too (both off until the capture handles them)."""
    c, h, w = d.int(1, 8), d.int(1, MAX_HW), d.int(1, MAX_HW)
    if d.chance(0.3):
        c = d.choice((1, 3, 16))
    net = _Net(d, c, h, w, inplace_reuse, cat_height)
    if d.chance(0.8):
        net.conv(net.values[0])
    for _ in range(d.int(0, MAX_OPS)):
        net.step()
    out = net.head(net.merge_dangling())
    if not any(f in net.feat for f in ("conv", "linear", "batchnorm")):  # something to compile
        m = net.module(f"nn.Conv2d({out.shape[0]}, 4, 1)" if len(out.shape) == 3 else f"nn.Linear({out.shape[0]}, 4)")
        out = net.new(f"{m}({out.name})", (4, *out.shape[1:]), out)
        net.feat["conv" if len(out.shape) == 3 else "linear"] += 1
    array = (d.int(1, MAX_ARRAY), d.int(1, MAX_ARRAY))
    block = (d.choice(BLOCK_SIZES), d.choice(BLOCK_SIZES))
    # one-shot pruning needs a conv or linear after the first: with none, mostly draw it dense
    # (sparse, it is a clean refusal, "no sparsifiable layer", which a few examples keep)
    prunable = net.feat["conv"] + net.feat["linear"] > 1
    sparse = not d.chance(0.3) and (prunable or d.chance(0.1))
    sparsity = round(0.25 + d.int(0, 65) / 100, 2) if sparse else 0.0
    memory, balance = _memory(d), not d.chance(0.2)
    case = Case(net.source(out), (1, c, h, w), array, block, sparsity, d.int(0, 2**31 - 1), memory, balance,
                Counter({k: int(v) for k, v in net.feat.items() if v}))
    case.features.update({f"array {case.array_spec}": 1, f"block {block[0]}x{block[1]}": 1,
                          "sparsity 0" if sparsity == 0 else "sparsity 0.25-0.9": 1,
                          f"ops {len(net.fwd) // 4 * 4}-{len(net.fwd) // 4 * 4 + 3}": 1,
                          **{f"memory {k}": 1 for k in memory}})
    if not balance:
        case.features["compile balance=False"] = 1
    return case


def _memory(d: Draw) -> dict[str, dict[str, int]]:
    """Smaller core / MemTile memories than the preset's (forcing finer splits, staging and DDR
    spills), and the weight slot pieces; mostly the preset's own."""
    out: dict[str, dict[str, int]] = {}
    if d.chance(0.25):
        kib = d.choice((1, 2, 4, 8))
        out["core"] = {"input_buffer_bytes": kib * 1024, "output_buffer_bytes": kib * 1024,
                       "weight_buffer_bytes": d.choice((1, 2, 4, 8)) * 1024}
    if d.chance(0.25):
        out["memtile"] = {"bytes": d.choice((8, 16, 32, 64)) * 1024, "weight_slot_pieces": d.int(1, 8)}
    return out


def random_case(seed: int, index: int, **kw: Any) -> Case:
    """Example ``index`` of run ``seed`` (the benchmark's; same on every run)."""
    return draw_case(RandomDraw(seed * 1_000_003 + index), **kw)


def cases(**kw: Any):
    """The Hypothesis strategy of ``Case``s."""
    from hypothesis import strategies as st

    @st.composite
    def _cases(draw_fn: Callable[[Any], Any]) -> Case:
        return draw_case(HypothesisDraw(draw_fn), **kw)

    return _cases()


def build_module(case: Case) -> nn.Module:
    """Instantiate the case's source with its seed: default PyTorch initialisation, then batch-norm
    statistics and affine parameters away from the identity (so folding matters)."""
    ns: dict[str, Any] = {"nn": nn, "F": F, "torch": torch}
    exec(compile(case.source, "<fuzz-net>", "exec"), ns)  # noqa: S102 - our own generated source
    torch.manual_seed(case.seed)
    m = ns["FuzzNet"]()
    randomize_bn(m, case.seed)
    return m.eval()


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(c, generator=g) * 2 + 0.2)
            if m.affine:
                m.weight.data.copy_(torch.randn(c, generator=g))
                m.bias.data.copy_(torch.randn(c, generator=g) * 0.3)
    return model


def _divisors(n: int) -> list[int]:
    return [x for x in range(1, n + 1) if n % x == 0]


def _meta_shape(shape: tuple[int, ...], fn: Callable[[torch.Tensor], torch.Tensor]) -> tuple[int, ...] | None:
    """Output (C, H, W) of ``fn`` on a (1, C, H, W) meta tensor; None if PyTorch refuses it or it is empty."""
    try:
        out = tuple(fn(torch.empty((1, *shape), device="meta")).shape[1:])
    except RuntimeError:
        return None
    return out if min(out) > 0 else None


def _conv_shape(shape, co, k, stride, pad, dil, groups) -> tuple[int, int, int]:
    _, h, w = shape
    if isinstance(pad, str):
        return co, h, w
    oh, ow = ((n + 2 * p - d * (kk - 1) - 1) // s + 1
              for n, p, d, kk, s in zip((h, w), pad, dil, k, stride, strict=True))
    return co, oh, ow
