"""Darknet ``.cfg`` files -> ``LayerSpec`` tuples, with Darknet's own shape arithmetic.

The parser follows pjreddie/darknet's ``read_cfg``/``parse_network_cfg`` closely, because a
fault-injection campaign is only comparable with the published studies if the layer numbering, the
output shapes and the padding rules are Darknet's, not PyTorch's.  Where Darknet is lax
(``atoi("3abc") == 3``, unknown activations silently become ReLU, unknown options are only
warned about) we refuse instead: a silently different network would make every injection result
meaningless.  Every refusal is a single-line :class:`KernelfiError` naming the file, the line and
the problem, so the CLI can show it as is.  One laxity is kept, because Darknet's own stock cfgs
rely on it and its meaning is unambiguous: a repeated option keeps its first value (Darknet's
``option_find`` walks the list from the front), with a one-line :class:`CfgWarning`.
"""
from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from kernelfi._utils import KernelfiError, KernelfiWarning, c_div, one_line
from kernelfi.kernels import shortcut_geometry
from kernelfi.types import LayerSpec

__all__ = [
    "CfgWarning",
    "Section",
    "parse_cfg",
    "parse_cfg_text",
    "build_layers",
    "as_chw",
    "ACTIVATIONS",
    "BN_EPS",
]

#: Darknet's normalize_kernel epsilon (GPU path; the CPU path adds .000001 after the sqrt).
BN_EPS: float = 0.00001

#: Activations the kernel library implements (Darknet's ``activate_array`` subset).
ACTIVATIONS: tuple[str, ...] = ("linear", "relu", "leaky", "logistic")

# Darknet's section spellings (string_to_layer_type) -> our canonical layer type.
_SECTION_ALIASES: dict[str, str] = {
    "net": "net",
    "network": "net",
    "convolutional": "convolutional",
    "conv": "convolutional",
    "connected": "connected",
    "conn": "connected",
    "maxpool": "maxpool",
    "max": "maxpool",
    "avgpool": "avgpool",
    "avg": "avgpool",
    "shortcut": "shortcut",
    "route": "route",
    "dropout": "dropout",
    "softmax": "softmax",
    "soft": "softmax",
    "cost": "cost",
}

# Sections Darknet knows but kernelfi has no kernels for: a clearer message than "unknown".
_DARKNET_UNSUPPORTED: frozenset[str] = frozenset({
    "crop", "detection", "region", "yolo", "iseg", "local", "deconv", "deconvolutional",
    "activation", "logistic", "l2norm", "crnn", "gru", "lstm", "rnn", "reorg", "lrn",
    "normalization", "batchnorm", "upsample",
})

# Options each layer section accepts.  Options outside these sets are refused (see module doc).
# Options Darknet reads only while training are accepted and ignored.
_TRAINING_ONLY: frozenset[str] = frozenset({
    "learning_rate", "stopbackward", "dontsave", "noloss", "dot", "smooth",
})
_KNOWN_OPTIONS: dict[str, frozenset[str]] = {
    "convolutional": frozenset({
        "filters", "size", "stride", "pad", "padding", "groups", "activation",
        "batch_normalize", "binary", "xnor", "dilation", "flipped", "dontload",
        "dontloadscales", "numload", "stride_x", "stride_y",
    }),
    "connected": frozenset({"output", "activation", "batch_normalize", "dontload",
                            "dontloadscales"}),
    "maxpool": frozenset({"size", "stride", "padding", "stride_x", "stride_y"}),
    "avgpool": frozenset(),
    "shortcut": frozenset({"from", "activation", "alpha", "beta"}),
    "route": frozenset({"layers"}),
    "dropout": frozenset({"probability"}),
    "softmax": frozenset({"groups", "temperature", "spatial", "tree"}),
}

class CfgWarning(KernelfiWarning):
    """A cfg that Darknet reads, but not the way its author may have meant (one line)."""


_INT_RE = re.compile(r"[+-]?[0-9]+\Z")
_FLOAT_RE = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\Z")
_INT32_MAX = 2**31 - 1


# ------------------------------------------------------------------------------------------------
# Sections
# ------------------------------------------------------------------------------------------------
@dataclass
class Section:
    """One ``[type]`` block of a cfg, with the line numbers errors need to point at.

    ``type`` is canonical (``conv`` -> ``convolutional``); ``header`` keeps the spelling used in
    the file.  ``options`` keeps file order; Darknet strips all whitespace from a line, so
    ``hue = .1`` arrives here as ``hue`` -> ``.1``.
    """

    type: str
    line: int
    source: str = "<cfg>"
    header: str = ""
    options: dict[str, str] = field(default_factory=dict)
    option_lines: dict[str, int] = field(default_factory=dict)

    # -- typed getters: every conversion error carries file, line and option -------------------
    def where(self, key: str | None = None) -> str:
        line = self.option_lines.get(key, self.line) if key is not None else self.line
        return f"{self.source}:{line}"

    def fail(self, problem: str, key: str | None = None) -> KernelfiError:
        return KernelfiError(one_line(f"{self.where(key)}: [{self.header or self.type}] {problem}"))

    def get_int(self, key: str, default: int | None = None) -> int:
        raw = self.options.get(key)
        if raw is None:
            if default is None:
                raise self.fail(f"missing required option '{key}'")
            return default
        if not _INT_RE.match(raw):
            raise self.fail(f"bad integer value {key}={raw!r}", key)
        value = int(raw)
        if abs(value) > _INT32_MAX:
            raise self.fail(f"bad integer value {key}={raw!r} (out of Darknet's int range)", key)
        return value

    def get_float(self, key: str, default: float) -> float:
        raw = self.options.get(key)
        if raw is None:
            return default
        if not _FLOAT_RE.match(raw):
            raise self.fail(f"bad number value {key}={raw!r}", key)
        value = float(raw)
        if not math.isfinite(value):
            raise self.fail(f"bad number value {key}={raw!r} (not finite)", key)
        return value

    def get_str(self, key: str, default: str | None = None) -> str:
        raw = self.options.get(key)
        if raw is None:
            if default is None:
                raise self.fail(f"missing required option '{key}'")
            return default
        return raw


# ------------------------------------------------------------------------------------------------
# Parsing
# ------------------------------------------------------------------------------------------------
def parse_cfg(path_or_text: str | Path) -> list[Section]:
    """Parse a Darknet cfg given as a path or as the cfg text itself.

    A ``str`` counts as cfg text when it contains a newline or starts with ``[``; anything else
    is a path.  Use :func:`parse_cfg_text` to be explicit.
    """
    if isinstance(path_or_text, str) and ("\n" in path_or_text or path_or_text.lstrip().startswith("[")):
        return parse_cfg_text(path_or_text)
    path = Path(path_or_text)
    try:
        raw = path.read_bytes()
    except (OSError, ValueError) as exc:
        raise KernelfiError(one_line(f"{path}: cannot read cfg file: {exc}")) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise KernelfiError(one_line(f"{path}: not a text cfg file (invalid UTF-8 at byte {exc.start})")) from None
    return parse_cfg_text(text, source=str(path))


def parse_cfg_text(text: str, source: str = "<cfg>") -> list[Section]:
    """Parse cfg text as Darknet's ``read_cfg`` does, but strictly.

    Like Darknet: all whitespace inside a line is removed, lines starting with ``#`` or ``;``
    are comments, the first ``=`` splits key and value.  Unlike Darknet: an inline ``#`` comment
    is cut off (Darknet relies on ``atoi`` ignoring it), and option lines without ``=`` and
    options before the first section are errors rather than warnings. A duplicate option keeps
    its first value, as Darknet's ``option_find`` does, with a :class:`CfgWarning` naming the
    section, the option and the line (Darknet's stock ``resnext101-32x4d.cfg`` repeats
    ``batch`` and ``subdivisions`` in its [net]).
    """
    sections: list[Section] = []
    # str.splitlines also splits on \x0b, \x1c, ... which Darknet's fgetl does not; Darknet
    # only breaks on \n (and we tolerate \r\n files by stripping whitespace below).
    for lineno, raw_line in enumerate(text.split("\n"), start=1):
        line = "".join(raw_line.split())
        if "\x00" in line:
            raise KernelfiError(f"{source}:{lineno}: NUL byte in cfg line")
        if not line or line[0] in "#;":
            continue
        if line[0] == "[":
            if not line.endswith("]"):
                raise KernelfiError(one_line(f"{source}:{lineno}: malformed section header {line!r}"))
            name = line[1:-1]
            canonical = _SECTION_ALIASES.get(name)
            if canonical is None:
                if name in _DARKNET_UNSUPPORTED:
                    raise KernelfiError(one_line(
                        f"{source}:{lineno}: section [{name}] is a Darknet layer kernelfi does not support "
                        f"(supported: convolutional, connected, maxpool, avgpool, shortcut, route, "
                        f"dropout, softmax)"))
                raise KernelfiError(one_line(f"{source}:{lineno}: unknown section [{name}]"))
            if not sections and canonical != "net":
                raise KernelfiError(one_line(
                    f"{source}:{lineno}: missing [net] section: the first section must be [net] or "
                    f"[network], got [{name}]"))
            if sections and canonical == "net":
                raise KernelfiError(one_line(f"{source}:{lineno}: second [{name}] section; only the first section may be [net]"))
            sections.append(Section(type=canonical, line=lineno, source=source, header=name))
            continue
        if "#" in line:
            line = line.split("#", 1)[0]
        if not sections:
            raise KernelfiError(one_line(f"{source}:{lineno}: missing [net] section: option {line!r} comes before any section"))
        if "=" not in line:
            raise KernelfiError(one_line(f"{source}:{lineno}: cannot parse {line!r}: expected key=value"))
        key, value = line.split("=", 1)
        if not key:
            raise KernelfiError(one_line(f"{source}:{lineno}: option with an empty name {line!r}"))
        sec = sections[-1]
        if key in sec.options:
            # Darknet's option_find walks the section's list from the front: the first wins
            warnings.warn(CfgWarning(one_line(
                f"{source}:{lineno}: [{sec.header}] duplicate option '{key}={value}' ignored: Darknet "
                f"uses the first, {key}={sec.options[key]} at line {sec.option_lines[key]}")), stacklevel=2)
            continue
        sec.options[key] = value
        sec.option_lines[key] = lineno
    if not sections:
        raise KernelfiError(f"{source}:1: missing [net] section (the cfg has no sections)")
    return sections


# ------------------------------------------------------------------------------------------------
# Shapes
# ------------------------------------------------------------------------------------------------
def as_chw(shape: Sequence[int]) -> tuple[int, int, int]:
    """A layer output as Darknet's (out_c, out_h, out_w): a flat (F,) output is F x 1 x 1.

    Darknet's connected layer sets out_h = out_w = 1, so a convolution may follow it.
    """
    if len(shape) == 1:
        return (int(shape[0]), 1, 1)
    if len(shape) == 3:
        return (int(shape[0]), int(shape[1]), int(shape[2]))
    raise KernelfiError(f"internal: layer shape {tuple(shape)} is neither (F,) nor (C, H, W)")


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _activation(sec: Section, default: str) -> str:
    act = sec.get_str("activation", default)
    if act not in ACTIVATIONS:
        raise sec.fail(
            f"unsupported option value activation={act!r} (kernelfi supports {', '.join(ACTIVATIONS)})",
            "activation")
    return act


def _require(sec: Section, key: str, value: int, ok: Callable[[int], bool], what: str) -> None:
    if not ok(value):
        raise sec.fail(f"unsupported option value {key}={value} ({what})", key)


def _reject_unknown(sec: Section) -> None:
    known = _KNOWN_OPTIONS.get(sec.type)
    if known is None:
        return
    for key in sec.options:
        if key not in known and key not in _TRAINING_ONLY:
            raise sec.fail(f"unknown option '{key}'", key)


def _reject_nondefault(sec: Section, key: str, default: int) -> None:
    if key in sec.options and sec.get_int(key) != default:
        raise sec.fail(f"unsupported option value {key}={sec.options[key]} (only {default} is supported)", key)


def _resolve_index(sec: Section, key: str, raw: str, index: int) -> int:
    """Darknet's relative indexing: negative counts back from this layer."""
    if not _INT_RE.match(raw):
        raise sec.fail(f"bad integer value {key}={sec.options.get(key, raw)!r}", key)
    value = int(raw)
    absolute = index + value if value < 0 else value
    if not 0 <= absolute < index:
        raise sec.fail(f"{key}={raw} refers to layer {absolute}, which is not an earlier layer "
                       f"(this is layer {index})", key)
    return absolute


def _net_shape(net: Section) -> tuple[int, int, int]:
    h = net.get_int("height", 0)
    w = net.get_int("width", 0)
    c = net.get_int("channels", 0)
    inputs = net.get_int("inputs", h * w * c)
    if h > 0 and w > 0 and c > 0:
        return (c, h, w)
    if any(k in net.options for k in ("height", "width", "channels")) or inputs <= 0:
        raise net.fail(f"needs positive width, height and channels (got width={w}, height={h}, channels={c})")
    return (inputs, 1, 1)


def build_layers(
    sections: Sequence[Section], input_shape: Sequence[int] | None = None
) -> tuple[tuple[LayerSpec, ...], tuple[int, int, int]]:
    """Turn parsed sections into LayerSpecs, computing shapes exactly as Darknet does.

    ``input_shape`` (C, H, W) overrides the [net] section's channels/height/width.  Layer ``i``
    is the i-th section after [net]; trailing [cost] sections (training only) are dropped, so
    Darknet's numbering of the remaining layers is unchanged.  Every layer's ``params`` holds
    ``in_shape`` (the (C, H, W) or (F,) it consumes; the first input's for route/shortcut),
    which the weights reader and DarknetNet use to size the weight tensors.
    """
    if not sections or sections[0].type != "net":
        src = sections[0].source if sections else "<cfg>"
        line = sections[0].line if sections else 1
        raise KernelfiError(f"{src}:{line}: missing [net] section: the first section must be [net] or [network]")
    net = sections[0]
    if input_shape is not None:
        shape_in = tuple(int(d) for d in input_shape)
        if len(shape_in) != 3 or min(shape_in) <= 0:
            raise KernelfiError(one_line(f"{net.source}: input_shape must be (C, H, W) with positive sizes, got {tuple(input_shape)}"))
        net_shape: tuple[int, int, int] = (shape_in[0], shape_in[1], shape_in[2])
    else:
        net_shape = _net_shape(net)

    body = list(sections[1:])
    while body and body[-1].type == "cost":
        body.pop()
    if not body:
        raise KernelfiError(f"{net.source}:{net.line}: the cfg defines no layers after [{net.header or 'net'}]")

    layers: list[LayerSpec] = []
    for index, sec in enumerate(body):
        if sec.type == "cost":
            raise sec.fail("a [cost] layer is only supported at the end of the network (it is training-only)")
        if sec.type == "net":
            raise sec.fail("only the first section may be [net]")
        _reject_unknown(sec)
        prev_shape: tuple[int, ...] = layers[-1].out_shape if layers else net_shape
        default_inputs = (index - 1,)
        builder = _BUILDERS[sec.type]
        spec = builder(sec, index, default_inputs, prev_shape, layers)
        _check_map_inputs(sec, spec, layers)
        layers.append(spec)
    return tuple(layers), net_shape


#: Layers that read their input as a C x H x W map (Darknet's l.c, l.h, l.w of the layer before)
_READS_MAP = frozenset({"convolutional", "maxpool", "avgpool", "shortcut", "route"})


def _shapeless(layers: Sequence[LayerSpec], i: int) -> bool:
    """Does Darknet give layer ``i``'s output no C x H x W? A softmax sets only its output count
    (out_c = out_h = out_w stay 0); a dropout and a route keep their (first) input's shape."""
    if i < 0:  # the network's input
        return False
    spec = layers[i]
    if spec.type == "softmax":
        return True
    return spec.type in ("dropout", "route") and _shapeless(layers, spec.inputs[0])


def _check_map_inputs(sec: Section, spec: LayerSpec, layers: Sequence[LayerSpec]) -> None:
    """A layer that reads a map cannot read a softmax's output, which has none in Darknet (a
    [connected] layer's F outputs are an F x 1 x 1 map; a [connected] may follow a softmax).
    A route of softmax outputs alone is Darknet's 0 x 0 map too, left to its reader."""
    if spec.type not in _READS_MAP:
        return
    flat = [i for i in spec.inputs if _shapeless(layers, i)]
    if not flat or (spec.type == "route" and len(flat) == len(spec.inputs)):
        return
    raise sec.fail(f"reads layer {flat[0]}'s output as a C x H x W map, but it is a "
                   "softmax's, which Darknet gives no map shape (out_c = out_h = out_w = 0); put a [connected] "
                   "layer in between")


# ------------------------------------------------------------------------------------------------
# Per-section builders: (section, index, inputs, in_shape, earlier layers) -> LayerSpec
# ------------------------------------------------------------------------------------------------
def _weights_map(index: int, batch_normalize: bool) -> dict[str, str]:
    roles = ["weights", "biases"]
    if batch_normalize:
        roles += ["scales", "rolling_mean", "rolling_variance"]
    return {role: f"layers.{index}.{role}" for role in roles}


def _spec(index: int, typ: str, inputs: tuple[int, ...], out_shape: tuple[int, ...],
          params: dict[str, Any], weights: Mapping[str, str] | None = None) -> LayerSpec:
    return LayerSpec(index=index, type=typ, name=f"layers.{index}", inputs=inputs,
                     out_shape=tuple(int(d) for d in out_shape), params=params,
                     weights=dict(weights or {}))


def _conv(sec: Section, index: int, inputs: tuple[int, ...], in_shape: tuple[int, ...],
          layers: list[LayerSpec]) -> LayerSpec:
    c, h, w = as_chw(in_shape)
    filters = sec.get_int("filters", 1)
    size = sec.get_int("size", 1)
    stride = sec.get_int("stride", 1)
    pad_flag = sec.get_int("pad", 0)
    padding = sec.get_int("padding", 0)
    groups = sec.get_int("groups", 1)
    batch_normalize = sec.get_int("batch_normalize", 0) != 0
    activation = _activation(sec, "logistic")  # Darknet's default for conv
    for key, default in (("binary", 0), ("xnor", 0), ("dilation", 1), ("flipped", 0),
                         ("dontload", 0), ("dontloadscales", 0)):
        _reject_nondefault(sec, key, default)
    if "numload" in sec.options:
        raise sec.fail("unsupported option 'numload' (partial weight loading)", "numload")
    for key in ("stride_x", "stride_y"):
        if key in sec.options and sec.get_int(key) != stride:
            raise sec.fail(f"unsupported option value {key}={sec.options[key]} (only square strides)", key)
    _require(sec, "filters", filters, lambda v: v >= 1, "must be >= 1")
    _require(sec, "size", size, lambda v: v >= 1, "must be >= 1")
    _require(sec, "stride", stride, lambda v: v >= 1, "must be >= 1")
    _require(sec, "padding", padding, lambda v: v >= 0, "must be >= 0")
    _require(sec, "groups", groups, lambda v: v >= 1, "must be >= 1")
    pad = size // 2 if pad_flag else padding
    if c % groups or filters % groups:
        raise sec.fail(f"groups={groups} does not divide the input channels ({c}) and filters ({filters})", "groups")
    out_h = c_div(h + 2 * pad - size, stride) + 1
    out_w = c_div(w + 2 * pad - size, stride) + 1
    if out_h < 1 or out_w < 1:
        raise sec.fail(f"a {size}x{size} kernel with stride {stride} and pad {pad} does not fit the "
                       f"{c}x{h}x{w} input (output would be {out_h}x{out_w})")
    params: dict[str, Any] = {
        "filters": filters, "size": size, "ksize": size, "stride": stride, "pad": pad,
        "groups": groups, "batch_normalize": batch_normalize, "activation": activation,
        "in_shape": tuple(in_shape), "channels": c, "height": h, "width": w,
        "dilation": 1, "out_h": out_h, "out_w": out_w, "line": sec.line,
    }
    if batch_normalize:
        params["eps"] = BN_EPS
    return _spec(index, "convolutional", inputs, (filters, out_h, out_w), params,
                 _weights_map(index, batch_normalize))


def _connected(sec: Section, index: int, inputs: tuple[int, ...], in_shape: tuple[int, ...],
               layers: list[LayerSpec]) -> LayerSpec:
    outputs = sec.get_int("output", 1)
    activation = _activation(sec, "logistic")  # Darknet's default for connected
    batch_normalize = sec.get_int("batch_normalize", 0) != 0
    for key in ("dontload", "dontloadscales"):
        _reject_nondefault(sec, key, 0)
    _require(sec, "output", outputs, lambda v: v >= 1, "must be >= 1")
    n_in = _numel(in_shape)
    params: dict[str, Any] = {
        "output": outputs, "outputs": outputs, "inputs": n_in, "activation": activation,
        "batch_normalize": batch_normalize, "in_shape": tuple(in_shape), "line": sec.line,
    }
    if batch_normalize:
        params["eps"] = BN_EPS
    return _spec(index, "connected", inputs, (outputs,), params, _weights_map(index, batch_normalize))


def _maxpool(sec: Section, index: int, inputs: tuple[int, ...], in_shape: tuple[int, ...],
             layers: list[LayerSpec]) -> LayerSpec:
    c, h, w = as_chw(in_shape)
    stride = sec.get_int("stride", 1)
    size = sec.get_int("size", stride)
    padding = sec.get_int("padding", size - 1)  # Darknet: total padding, default size-1
    for key in ("stride_x", "stride_y"):
        if key in sec.options and sec.get_int(key) != stride:
            raise sec.fail(f"unsupported option value {key}={sec.options[key]} (only square strides)", key)
    _require(sec, "stride", stride, lambda v: v >= 1, "must be >= 1")
    _require(sec, "size", size, lambda v: v >= 1, "must be >= 1")
    _require(sec, "padding", padding, lambda v: v >= 0, "must be >= 0")
    out_h = c_div(h + padding - size, stride) + 1
    out_w = c_div(w + padding - size, stride) + 1
    if out_h < 1 or out_w < 1:
        raise sec.fail(f"a {size}x{size} pool with stride {stride} and padding {padding} does not fit "
                       f"the {c}x{h}x{w} input (output would be {out_h}x{out_w})")
    params: dict[str, Any] = {
        "size": size, "ksize": size, "stride": stride, "pad": padding, "padding": padding,
        "in_shape": tuple(in_shape), "channels": c, "height": h, "width": w,
        "out_h": out_h, "out_w": out_w, "line": sec.line,
    }
    return _spec(index, "maxpool", inputs, (c, out_h, out_w), params)


def _avgpool(sec: Section, index: int, inputs: tuple[int, ...], in_shape: tuple[int, ...],
             layers: list[LayerSpec]) -> LayerSpec:
    c, h, w = as_chw(in_shape)
    params: dict[str, Any] = {"in_shape": tuple(in_shape), "channels": c, "height": h, "width": w,
                              "line": sec.line}
    return _spec(index, "avgpool", inputs, (c, 1, 1), params)


def _shortcut(sec: Section, index: int, inputs: tuple[int, ...], in_shape: tuple[int, ...],
              layers: list[LayerSpec]) -> LayerSpec:
    if index == 0:
        raise sec.fail("a [shortcut] cannot be the first layer")
    src = _resolve_index(sec, "from", sec.get_str("from"), index)
    activation = _activation(sec, "linear")  # Darknet's default for shortcut
    for key in ("alpha", "beta"):
        if sec.get_float(key, 1.0) != 1.0:
            raise sec.fail(f"unsupported option value {key}={sec.options[key]} (only 1 is supported)", key)
    add_shape = layers[src].out_shape
    if shortcut_geometry(as_chw(add_shape), as_chw(in_shape)) is None:
        raise sec.fail(f"from={sec.options['from']} adds layer {src}'s output {tuple(add_shape)} to layer "
                       f"{index - 1}'s output {tuple(in_shape)}: the width and height ratios differ "
                       f"(Darknet's shortcut_gpu asserts they agree)", "from")
    params: dict[str, Any] = {"from": src, "activation": activation, "in_shape": tuple(in_shape),
                              "add_shape": tuple(add_shape), "line": sec.line}
    return _spec(index, "shortcut", (index - 1, src), in_shape, params)


def _route(sec: Section, index: int, inputs: tuple[int, ...], in_shape: tuple[int, ...],
           layers: list[LayerSpec]) -> LayerSpec:
    raw = sec.get_str("layers")
    parts = raw.split(",")
    if index == 0:
        raise sec.fail("a [route] cannot be the first layer")
    srcs = tuple(_resolve_index(sec, "layers", p, index) for p in parts)
    shapes = [as_chw(layers[s].out_shape) for s in srcs]
    c0, h0, w0 = shapes[0]
    for s, (c, h, w) in zip(srcs[1:], shapes[1:]):
        if (h, w) != (h0, w0):
            raise sec.fail(f"layers={raw} concatenates outputs of different spatial size: layer "
                           f"{srcs[0]} is {h0}x{w0}, layer {s} is {h}x{w}", "layers")
    out_c = sum(c for c, _, _ in shapes)
    params: dict[str, Any] = {"layers": srcs, "sizes": tuple(_numel(layers[s].out_shape) for s in srcs),
                              "in_shape": tuple(layers[srcs[0]].out_shape), "line": sec.line}
    return _spec(index, "route", srcs, (out_c, h0, w0), params)


def _dropout(sec: Section, index: int, inputs: tuple[int, ...], in_shape: tuple[int, ...],
             layers: list[LayerSpec]) -> LayerSpec:
    probability = sec.get_float("probability", 0.5)
    if not 0.0 <= probability < 1.0:
        raise sec.fail(f"unsupported option value probability={sec.options['probability']} (must be in [0, 1))",
                       "probability")
    params: dict[str, Any] = {"probability": probability, "in_shape": tuple(in_shape), "line": sec.line}
    return _spec(index, "dropout", inputs, in_shape, params)


def _softmax(sec: Section, index: int, inputs: tuple[int, ...], in_shape: tuple[int, ...],
             layers: list[LayerSpec]) -> LayerSpec:
    groups = sec.get_int("groups", 1)
    temperature = sec.get_float("temperature", 1.0)
    if groups != 1:
        raise sec.fail(f"unsupported option value groups={groups} (only groups=1)", "groups")
    if temperature <= 0.0:
        raise sec.fail(f"unsupported option value temperature={sec.options['temperature']} (must be > 0)",
                       "temperature")
    if "tree" in sec.options:
        raise sec.fail("unsupported option 'tree' (hierarchical softmax)", "tree")
    if "spatial" in sec.options and sec.get_float("spatial", 0.0) != 0.0:
        raise sec.fail(f"unsupported option value spatial={sec.options['spatial']} (only 0)", "spatial")
    n = _numel(in_shape)
    params: dict[str, Any] = {"groups": groups, "temperature": temperature, "n": n,
                              "in_shape": tuple(in_shape), "line": sec.line}
    return _spec(index, "softmax", inputs, (n,), params)


_BUILDERS: dict[str, Callable[[Section, int, tuple[int, ...], tuple[int, ...], list[LayerSpec]], LayerSpec]] = {
    "convolutional": _conv,
    "connected": _connected,
    "maxpool": _maxpool,
    "avgpool": _avgpool,
    "shortcut": _shortcut,
    "route": _route,
    "dropout": _dropout,
    "softmax": _softmax,
}
