"""Random CNNs from the layers the lowering supports: an architecture is plain data (a tuple
of ops, each a tuple), drawn op by op from whatever source of choices the caller gives
(hypothesis in tests/zoo/test_fuzz_nets.py, a seeded ``random.Random`` in bench/soak.py), so
both explore the same vocabulary and a failing architecture prints as a literal to paste back.

The vocabulary: convolutions (square and 1xk/kx1 kernels, strides, dilation 2, integer or
'same' padding, depthwise groups, with or without bias, BN, an activation), standalone activations and
BatchNorm and GroupNorm anywhere, max (dilation 1 or 2) and local average pools (strides 1-3, padding, ceil_mode, divisor_override), adaptive
average and max pools, residual branches combined by add, subtract or multiply, channel concatenations,
squeeze-and-excitation blocks (module and functional styles, sigmoid and hard-sigmoid gates),
nearest and bilinear (either align_corners) upsampling and ConvTranspose2d up-convolutions (k=2
s=2; k=3 s=2 p=1 output_padding=1; with or without bias, BN, an activation), dropout, identity,
arithmetic with Python numbers (``x*a + b``, ``x/a - b``, ``b - a*x``), clamps (``torch.clamp``,
one-sided, ``Hardtanh``), constant pads before an unpadded conv (``ZeroPad2d``, ``F.pad`` with a
value), channel splits (chunk, split, ``x[:, a:b]``) whose halves are added, subtracted or
concatenated back, channel shuffles (ShuffleNet's view/transpose/contiguous/view, ``reshape``,
``permute``, ``nn.ChannelShuffle``), pixel shuffles by 2 (``nn.PixelShuffle``/``PixelUnshuffle``
and the ``F.`` forms), reflect and replicate pads (``F.pad``, ``ReflectionPad2d``/``ReplicationPad2d``,
``Conv2d(padding_mode=...)``), and three classification heads.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import nn

Op = tuple[Any, ...]
Arch = tuple[Op, ...]

ACTS = ("relu", "relu6", "silu", "hardswish", "hardsigmoid", "sigmoid", "tanh", "gelu", "leaky0.1", "leaky0.2",
        "identity", "gelu_tanh", "mish", "elu", "selu", "softplus", "prelu")
HEADS = ("flatten", "mean", "adaptive")
KINDS = ("conv", "conv", "conv", "act", "bn", "maxpool", "avgpool", "adaptive", "res", "cat", "se", "se", "up", "up", "drop",
         "affine", "clamp", "pad", "split", "gn", "shuffle", "pixel", "mpad")
AFFINE = (0.5, 2.0, -1.5, 3.0, 0.1)
LOWS, HIGHS = (-1.0, -0.5, 0.0, None), (0.5, 1.0, 2.0, None)


class Draw(Protocol):
    """A source of choices: an integer in [lo, hi], one of a sequence."""

    def int(self, lo: int, hi: int) -> int: ...

    def choice(self, options: Sequence[Any]) -> Any: ...


class RandomDraw:
    """Choices from a seeded ``random.Random`` (the soak's)."""

    def __init__(self, rng: Any) -> None:
        self.rng = rng

    def int(self, lo: int, hi: int) -> int:
        return int(self.rng.randint(lo, hi))

    def choice(self, options: Sequence[Any]) -> Any:
        return options[self.rng.randrange(len(options))]


def act_module(name: str) -> nn.Module:
    if name.startswith("leaky"):
        return nn.LeakyReLU(float(name[5:]))
    return {"relu": nn.ReLU, "relu6": nn.ReLU6, "silu": nn.SiLU, "hardswish": nn.Hardswish,
            "hardsigmoid": nn.Hardsigmoid, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "gelu": nn.GELU,
            "identity": nn.Identity, "gelu_tanh": lambda: nn.GELU(approximate="tanh"), "mish": nn.Mish,
            "elu": nn.ELU, "selu": nn.SELU, "softplus": nn.Softplus, "prelu": nn.PReLU}[name]()


def _conv_op(d: Draw, c: int, h: int, w: int, same_shape: bool = False,
             acts: Sequence[str] = ACTS) -> tuple[Op, tuple[int, int, int]]:
    """A conv op valid on a (c, h, w) map and the shape it gives (``same_shape``: keeps c, h, w)."""
    cout = c if same_shape else d.int(1, 8)
    k = d.choice([1, 3, 3, (1, 3), (3, 1), 5] if min(h, w) >= 5 else [1, 3, (1, 3), (3, 1)])
    kh, kw = (k, k) if isinstance(k, int) else k
    stride = 1 if same_shape or min(h, w) < 4 else d.choice([1, 1, 2])
    # dilation 2 where the dilated window (2k-1 wide) still fits: PyTorch's dilated im2col
    dil = 2 if max(kh, kw) > 1 and min(h, w) >= 2 * max(kh, kw) and d.int(0, 3) == 0 else 1
    rh, rw = dil * (kh - 1) // 2, dil * (kw - 1) // 2
    pad: Any = "same" if stride == 1 and d.int(0, 2) == 0 else (rh if kh == kw else (rh, rw))
    if same_shape and pad != "same":
        pad = (rh, rw)
    groups = c if (cout == c and d.int(0, 2) == 0) else 1
    op = ("conv", cout, k, stride, pad, groups, bool(d.int(0, 1)), bool(d.int(0, 1)), d.choice(tuple(acts) + (None,)))
    op = op + (dil,) if dil > 1 else op   # a 10th element only when dilated: older literals stay valid
    if pad == "same":
        return op, (cout, h, w)
    ph, pw = pad if isinstance(pad, tuple) else (pad, pad)
    return op, (cout, (h + 2 * ph - dil * (kh - 1) - 1) // stride + 1, (w + 2 * pw - dil * (kw - 1) - 1) // stride + 1)


def draw_arch(d: Draw, shape: tuple[int, int, int], ops: int, kinds: Sequence[str] = KINDS,
              acts: Sequence[str] = ACTS) -> Arch:
    """``ops`` ops of ``kinds`` valid on an input of ``shape``, then a head."""
    c, h, w = shape
    out: list[Op] = []
    for _ in range(ops):
        kind = d.choice(kinds)
        if kind == "conv":
            op, (c, h, w) = _conv_op(d, c, h, w, acts=acts)
        elif kind == "act":
            op = ("act", d.choice(acts))
        elif kind == "bn":
            op = ("bn",)
        elif kind == "gn" and c * h * w >= 4:
            # GroupNorm: G divides C (rows of 512 or more get 512 threads, kernels.norm), with at
            # least 4 values a group (of one value the output is beta whatever the input, and
            # PyTorch refuses it in training mode)
            op = ("gn", d.choice([g for g in range(1, c + 1) if c % g == 0 and (c // g) * h * w >= 4]),
                  bool(d.int(0, 1)))
        elif kind in ("maxpool", "avgpool") and min(h, w) >= 2:
            k = d.int(2, min(3, h, w))
            s = d.int(1, 3)   # stride 3 with ceil_mode: the far-side ceil_pad_h/ceil_pad_w launches
            pad = d.int(0, k // 2)
            ceil = bool(d.int(0, 1))
            # dilation 2 (PyTorch's max_pool_forward_nchw) where the dilated window fits
            dil = d.int(1, 2) if kind == "maxpool" and min(h, w) + 2 * pad >= 2 * k - 1 else 1
            # avgpool: PyTorch's divisor_override sometimes (the local_avgpool launch's divisor param)
            div = d.choice((0, 0, 3, k * k + 1)) if kind == "avgpool" else 0
            op = (kind, k, s, pad, ceil) + ((dil,) if dil > 1 else ()) + ((div,) if div else ())
            span = dil * (k - 1) + 1
            size = [((n + 2 * pad - span + (s - 1 if ceil else 0)) // s) + 1 for n in (h, w)]
            if ceil:  # PyTorch drops a last window that would start in the right padding
                size = [o - 1 if (o - 1) * s >= n + pad else o for o, n in zip(size, (h, w))]
            h, w = size
        elif kind == "adaptive" and min(h, w) >= 2:
            # to 1x1 (the global avgpool), or to any size up to one more than the input on
            # each axis: PyTorch's adaptive_avgpool kernel, overlapping uneven windows included
            h, w = (1, 1) if d.int(0, 2) == 0 else (d.int(1, h + 1), d.int(1, w + 1))
            op = ("adaptive", (h, w), d.choice(("avg", "max")))  # max: PyTorch's adaptivemaxpool kernel
        elif kind == "res":
            inner, _ = _conv_op(d, c, h, w, same_shape=True, acts=acts)
            op = ("res", d.choice(["add", "add", "sub", "mul"]), inner, d.choice(tuple(acts) + (None,)))
        elif kind == "cat" and c <= 16:
            inner, (c2, _, _) = _conv_op(d, c, h, w, same_shape=True, acts=acts)
            op, c = ("cat", inner), c + c2
        elif kind == "se":
            op = ("se", max(1, c // d.int(1, 4)), d.choice(["sigmoid", "hardsigmoid"]), d.choice(["module", "functional"]))
        elif kind == "up" and max(h, w) <= 8:
            # nearest (AlexeyAB's [upsample]), bilinear (PyTorch's kernel, either corner
            # alignment), or a ConvTranspose2d doubling the map: k=2 s=2, or k=3 s=2 p=1 with
            # output_padding=1 (overlapping windows): gemm (A transposed) + col2im
            form = d.choice(["nearest", "bilinear", "deconv"])
            if form == "nearest":
                op = ("up",)
            elif form == "bilinear":
                op = ("up", "bilinear", d.choice([False, True]))
            else:
                c = d.int(1, 8)
                op = ("up", "deconv", c, d.choice([2, 3]), bool(d.int(0, 1)), bool(d.int(0, 1)),
                      d.choice(tuple(acts) + (None,)))
            h, w = 2 * h, 2 * w
        elif kind == "drop":
            op = ("drop", d.choice(["dropout", "dropout2d", "identity"]))
        elif kind == "affine":
            op = ("affine", d.choice(["mul_add", "div_sub", "rsub"]), d.choice(AFFINE), d.choice(AFFINE))
        elif kind == "clamp":
            lo, hi = d.choice(LOWS), d.choice(HIGHS)
            op = ("clamp", d.choice(["clamp", "hardtanh"]) if None not in (lo, hi) else "clamp", lo,
                  hi if lo is not None or hi is not None else 1.0)
        elif kind == "pad":
            pads = (d.int(0, 2), d.int(0, 2), d.int(0, 2), d.int(0, 2))
            ph, pw = h + pads[2] + pads[3], w + pads[0] + pads[1]
            if min(ph, pw) < 3:
                continue
            cout = d.int(1, 8)
            conv = ("conv", cout, 3, 1, 0, 1, bool(d.int(0, 1)), bool(d.int(0, 1)), d.choice(tuple(acts) + (None,)))
            op, (c, h, w) = ("pad", pads, d.choice([0.0, 0.0, 0.5, -1.0]), conv), (cout, ph - 2, pw - 2)
        elif kind == "split" and c >= 2 and c % 2 == 0:
            op = ("split", d.choice(["chunk", "split", "slice"]), d.choice(["add", "sub", "cat"]), c // 2)
            c = c if op[2] == "cat" else c // 2
        elif kind == "shuffle" and any(c % g == 0 and g < c for g in (2, 3, 4)):
            op = ("shuffle", d.choice(["view", "reshape", "permute", "module"]),
                  d.choice([g for g in (2, 3, 4) if c % g == 0 and g < c]))
        elif kind == "pixel" and (c % 4 == 0 or (h % 2 == 0 and w % 2 == 0 and c <= 4 and min(h, w) >= 4)):
            up = c % 4 == 0 and (h % 2 or w % 2 or c > 4 or min(h, w) < 4 or bool(d.int(0, 1)))
            op = ("pixel", "shuffle" if up else "unshuffle", bool(d.int(0, 1)))
            c, h, w = (c // 4, h * 2, w * 2) if up else (c * 4, h // 2, w // 2)
        elif kind == "mpad" and min(h, w) >= 2:
            mode, form = d.choice(["reflect", "replicate"]), d.choice(["F", "module", "conv"])
            lim = min(h, w) - 1 if mode == "reflect" else 2
            if form == "conv":
                cout = d.int(1, 8)
                op, c = ("mpad", mode, form, cout), cout
            else:
                pads = tuple(d.int(0, min(lim, 2)) for _ in range(4))
                op, h, w = ("mpad", mode, form, pads), h + pads[2] + pads[3], w + pads[0] + pads[1]
        else:
            continue
        out.append(op)
    out.append(("head", d.choice(HEADS), d.int(2, 6)))
    return tuple(out)


def random_net(rng: Any, max_ops: int = 8) -> tuple[tuple[int, int, int], Arch]:
    """An input shape (1 or 3 channels, 4 .. 12 pixels each side) and 2 .. ``max_ops`` ops
    drawn with a seeded ``random.Random``."""
    shape = (rng.choice([1, 3]), rng.randint(4, 12), rng.randint(4, 12))
    return shape, draw_arch(RandomDraw(rng), shape, rng.randint(2, max_ops))


def _conv(op: Op, cin: int) -> nn.Module:
    _, cout, k, stride, pad, groups, bias, bn, act = op[:9]
    dil = op[9] if len(op) > 9 else 1
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, pad, dilation=dil, groups=groups, bias=bias)]
    if bn:
        layers.append(nn.BatchNorm2d(cout))
    if act is not None:
        layers.append(act_module(act))
    return nn.Sequential(*layers)


def _deconv(op: Op, cin: int) -> nn.Module:
    """An ("up", "deconv", cout, k, bias, bn, act) op: a ConvTranspose2d doubling the map."""
    _, _, cout, k, bias, bn, act = op
    pad = 1 if k == 3 else 0
    layers: list[nn.Module] = [nn.ConvTranspose2d(cin, cout, k, 2, padding=pad, output_padding=pad, bias=bias)]
    if bn:
        layers.append(nn.BatchNorm2d(cout))
    if act is not None:
        layers.append(act_module(act))
    return nn.Sequential(*layers)


class SE(nn.Module):
    """Squeeze-and-excitation: pool, 1x1 conv down, ReLU, 1x1 conv up, gate, broadcast multiply."""

    def __init__(self, c: int, squeeze: int, gate: str, style: str) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, squeeze, 1), nn.Conv2d(squeeze, c, 1)
        self.style = style
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.gate = nn.Sigmoid() if gate == "sigmoid" else nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.style == "functional":
            s = F.adaptive_avg_pool2d(x, 1)
            return x * self.gate(self.fc2(F.relu(self.fc1(s))))
        return self.gate(self.fc2(torch.relu(self.fc1(self.pool(x))))) * x


class FuzzNet(nn.Module):
    """The module an ``Arch`` describes, on inputs of ``shape``."""

    def __init__(self, arch: Arch, shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        self.arch = arch
        self.mods = nn.ModuleList()
        c, h, w = shape
        probe = torch.zeros(1, *shape)
        for op in arch:
            kind = op[0]
            if kind == "conv":
                m: nn.Module = _conv(op, c)
            elif kind == "act":
                m = act_module(op[1])
            elif kind == "bn":
                m = nn.BatchNorm2d(c)
            elif kind == "gn":
                m = nn.GroupNorm(op[1], c, affine=op[2])
            elif kind == "maxpool":
                m = nn.MaxPool2d(op[1], op[2], op[3], dilation=op[5] if len(op) > 5 else 1, ceil_mode=op[4])
            elif kind == "avgpool":
                m = nn.AvgPool2d(op[1], op[2], op[3], ceil_mode=op[4], divisor_override=op[5] if len(op) > 5 else None)
            elif kind == "adaptive":
                m = nn.AdaptiveMaxPool2d(op[1]) if op[2:] == ("max",) else nn.AdaptiveAvgPool2d(op[1])
            elif kind in ("res", "cat"):
                m = nn.ModuleDict({"branch": _conv(op[2] if kind == "res" else op[1], c)})
                if kind == "res" and op[3] is not None:
                    m["act"] = act_module(op[3])
            elif kind == "se":
                m = SE(c, op[1], op[2], op[3])
            elif kind == "up" and len(op) > 1 and op[1] == "deconv":
                m = _deconv(op, c)
            elif kind == "up":
                m = nn.Upsample(scale_factor=2, mode="nearest") if len(op) == 1 else \
                    nn.Upsample(scale_factor=2, mode="bilinear", align_corners=op[2])
            elif kind == "drop":
                m = {"dropout": nn.Dropout(0.3), "dropout2d": nn.Dropout2d(0.3), "identity": nn.Identity()}[op[1]]
            elif kind == "clamp":
                m = nn.Hardtanh(op[2], op[3]) if op[1] == "hardtanh" else nn.Identity()
            elif kind == "pad":
                m = nn.ModuleDict({"conv": _conv(op[3], c)})
                if op[2] == 0.0:
                    m["pad"] = nn.ZeroPad2d(op[1])
            elif kind in ("affine", "split"):
                m = nn.Identity()
            elif kind == "mpad":
                m = nn.Conv2d(c, op[3], 3, padding=1, padding_mode=op[1]) if op[2] == "conv" else (
                    (nn.ReflectionPad2d if op[1] == "reflect" else nn.ReplicationPad2d)(op[3]) if op[2] == "module"
                    else nn.Identity())
            elif kind == "pixel":
                m = (nn.PixelShuffle(2) if op[1] == "shuffle" else nn.PixelUnshuffle(2)) if op[2] else nn.Identity()
            elif kind == "shuffle":
                m = nn.ChannelShuffle(op[2]) if op[1] == "module" else nn.Identity()
            elif kind == "head":
                features = c * h * w if op[1] == "flatten" else c
                m = nn.Sequential(nn.Linear(features, op[2]), nn.ReLU(), nn.Linear(op[2], num_classes))
            else:
                raise ValueError(f"unknown op {op!r}")
            self.mods.append(m)
            if kind != "head":
                with torch.no_grad():
                    probe = self.run_op(op, m.eval(), probe)
                c, h, w = probe.shape[1:]

    @staticmethod
    def run_op(op: Op, m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        kind = op[0]
        if kind == "res":
            y = m["branch"](x)
            y = x + y if op[1] == "add" else x - y if op[1] == "sub" else x * y
            return m["act"](y) if "act" in m else y
        if kind == "cat":
            return torch.cat([x, m["branch"](x)], 1)
        if kind == "affine":
            a, b = op[2], op[3]
            return x * a + b if op[1] == "mul_add" else x / a - b if op[1] == "div_sub" else b - a * x
        if kind == "clamp":
            return m(x) if op[1] == "hardtanh" else torch.clamp(x, op[2], op[3])
        if kind == "pad":
            return m["conv"](m["pad"](x) if "pad" in m else F.pad(x, op[1], value=op[2]))
        if kind == "split":
            half = op[3]   # in the op: x.shape[1] would be a traced value
            if op[1] == "chunk":
                a, b = torch.chunk(x, 2, dim=1)
            elif op[1] == "split":
                a, b = x.split(half, 1)
            else:
                a, b = x[:, :half], x[:, half:]
            return a + b if op[2] == "add" else a - b if op[2] == "sub" else torch.cat([b, a], 1)
        if kind == "mpad" and op[2] == "F":
            return F.pad(x, op[3], mode=op[1])
        if kind == "pixel" and not op[2]:
            return F.pixel_shuffle(x, 2) if op[1] == "shuffle" else F.pixel_unshuffle(x, 2)
        if kind == "shuffle" and op[1] != "module":
            b, c, h, w = x.size()
            y = x.view(b, op[2], c // op[2], h, w)
            if op[1] == "view":
                return y.transpose(1, 2).contiguous().view(b, c, h, w)
            if op[1] == "reshape":
                return torch.transpose(y, 1, 2).reshape(b, c, h, w)
            return y.permute(0, 2, 1, 3, 4).contiguous().flatten(1, 2)
        if kind == "head":
            if op[1] == "flatten":
                x = torch.flatten(x, 1)
            elif op[1] == "mean":
                x = x.mean((2, 3))
            else:
                x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
            return m(x)
        return m(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for op, m in zip(self.arch, self.mods):
            x = self.run_op(op, m, x)
        return x


def arch_name(arch: Arch, shape: tuple[int, int, int]) -> str:
    """A name that is a pure function of the architecture."""
    return "fuzz-" + hashlib.sha256(repr((shape, arch)).encode()).hexdigest()[:12]


MODEL_FILE = '''"""A fuzzed architecture of tests/zoo/fuzz_nets.py, as a model file (PATH.py:build)."""
import sys

sys.path.insert(0, {zoo!r})
from fuzz_nets import FuzzNet  # noqa: E402

ARCH = {arch!r}
SHAPE = {shape!r}


def build():
    return FuzzNet(ARCH, SHAPE, {classes!r})


build.input_shape = SHAPE
'''


def model_file(arch: Arch, shape: tuple[int, int, int], num_classes: int, where: Path) -> str:
    """Write ``arch`` as a model file under ``where``: its ``PATH.py:build`` name, which every
    process (a campaign's workers, replay) imports again by path (``kernelfi.models.user``)."""
    path = where / f"{arch_name(arch, shape).replace('-', '_')}.py"
    path.write_text(MODEL_FILE.format(zoo=str(Path(__file__).resolve().parent), arch=arch, shape=shape,
                                      classes=num_classes))
    return f"{path}:build"

