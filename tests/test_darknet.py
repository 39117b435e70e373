"""The Darknet front end: cfg parsing with Darknet's shape rules, the weights format, the
native forward computed by hand, and fuzzing that only KernelfiError ever escapes."""
from __future__ import annotations

import math
import struct
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernelfi._utils import KernelfiError
from kernelfi.models.darknet import (DarknetNet, asset_path, build_layers, load_darknet, parse_cfg,
                                     parse_cfg_text, random_state, read_weights, write_weights)

ALEXNET = asset_path("alexnet.cfg")


def _conv_out(n: int, size: int, stride: int, pad: int) -> int:
    return (n + 2 * pad - size) // stride + 1


def _pool_out(n: int, size: int, stride: int, padding: int) -> int:
    return (n + padding - size) // stride + 1  # Darknet: padding is the total, not per side


# ------------------------------------------------------------------------------------------------
# alexnet.cfg
# ------------------------------------------------------------------------------------------------
def test_alexnet_layers_and_shapes() -> None:
    layers, input_shape = build_layers(parse_cfg(ALEXNET))
    assert input_shape == (3, 227, 227)
    s0 = _conv_out(227, 11, 4, 0)                 # 55
    s1 = _pool_out(s0, 3, 2, 0)                   # 27 (the cfg says padding=0)
    s2 = _conv_out(s1, 5, 1, 5 // 2)              # pad=1 means size/2 = 2 pixels -> 27
    s3 = _pool_out(s2, 3, 2, 0)                   # 13
    s7 = _pool_out(s3, 3, 2, 0)                   # 6
    assert (s0, s1, s2, s3, s7) == (55, 27, 27, 13, 6)
    expected = [
        ("convolutional", (96, s0, s0)), ("maxpool", (96, s1, s1)),
        ("convolutional", (256, s2, s2)), ("maxpool", (256, s3, s3)),
        ("convolutional", (384, s3, s3)), ("convolutional", (384, s3, s3)),
        ("convolutional", (256, s3, s3)), ("maxpool", (256, s7, s7)),
        ("connected", (4096,)), ("dropout", (4096,)), ("connected", (4096,)), ("dropout", (4096,)),
        ("connected", (1000,)), ("softmax", (1000,)),
    ]
    assert [(l.type, l.out_shape) for l in layers] == expected
    assert [l.index for l in layers] == list(range(14))
    assert [l.name for l in layers] == [f"layers.{i}" for i in range(14)]
    assert layers[0].inputs == (-1,) and all(l.inputs == (l.index - 1,) for l in layers[1:])
    c2 = layers[2].params
    assert (c2["ksize"], c2["stride"], c2["pad"], c2["activation"], c2["batch_normalize"], c2["groups"]) == (
        5, 1, 2, "relu", False, 1)
    assert layers[1].params["pad"] == 0 and layers[12].params["activation"] == "linear"
    assert layers[8].params["inputs"] == 256 * 6 * 6
    assert dict(layers[0].weights) == {"weights": "layers.0.weights", "biases": "layers.0.biases"}
    assert not layers[1].weights


def test_maxpool_default_padding_is_size_minus_one() -> None:
    cfg = "[net]\nwidth=55\nheight=55\nchannels=1\n[maxpool]\nsize=3\nstride=2\n"
    (pool,), _ = build_layers(parse_cfg(cfg))
    assert pool.params["pad"] == 2
    assert pool.out_shape == (1, _pool_out(55, 3, 2, 2), _pool_out(55, 3, 2, 2)) == (1, 28, 28)


def test_alexnet_forward_runs() -> None:
    net = load_darknet(ALEXNET, seed=1)
    x = torch.rand(1, 3, 227, 227)
    probs = net(x)
    assert probs.shape == (1, 1000)
    assert torch.isfinite(probs).all() and abs(float(probs.sum()) - 1.0) < 1e-4
    assert torch.allclose(torch.softmax(net.logits(x), dim=1), probs, atol=1e-6)
    assert set(net.state_dict()) == {k for l in net.kernelfi_layers for k in l.weights.values()}


# ------------------------------------------------------------------------------------------------
# A network small enough to compute by hand
# ------------------------------------------------------------------------------------------------
TINY = """\
[net]
width=4
height=4
channels=1

[convolutional]
filters=1
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[connected]
output=2
activation=linear

[softmax]
"""


def _tiny_state() -> dict[str, torch.Tensor]:
    # y[i][j] = x[i][j] + x[i][j+1] - 10, so the conv is easy to do on paper
    w = torch.tensor([[0.0, 0, 0, 0, 1, 1, 0, 0, 0]])
    return {
        "layers.0.weights": w, "layers.0.biases": torch.tensor([-10.0]),
        "layers.2.weights": torch.tensor([[1.0, 0, 0, 0.1], [0, 1, 0.1, -0.1]]),
        "layers.2.biases": torch.tensor([0.5, -0.5]),
    }


def test_tiny_network_by_hand() -> None:
    layers, shape = build_layers(parse_cfg(TINY))
    assert [l.out_shape for l in layers] == [(1, 4, 4), (1, 2, 2), (2,), (2,)]
    assert layers[1].params["pad"] == 1   # default size-1: out = (4+1-2)/2+1 = 2
    net = DarknetNet(layers, _tiny_state(), shape)
    x = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4)
    # conv + bias: row0 1,3,5,3 -> -9,-7,-5,-7; row1 9,11,13,7 -> -1,1,3,-3;
    #              row2 17,19,21,11 -> 7,9,11,1; row3 25,27,29,15 -> 15,17,19,5
    # leaky: negatives x0.1
    conv = torch.tensor([[-0.9, -0.7, -0.5, -0.7], [-0.1, 1, 3, -0.3], [7, 9, 11, 1], [15, 17, 19, 5]])
    outs = net.layer_outputs(x)
    assert torch.allclose(outs[0][0, 0], conv)
    # maxpool: offset = -pad/2 = 0 in C (not Python's -1), so plain 2x2 windows
    assert torch.allclose(outs[1][0, 0], torch.tensor([[1.0, 3.0], [17.0, 19.0]]))
    # connected: [1, 3, 17, 19] -> 1 + 1.9 + .5 = 3.4 ; 3 + 1.7 - 1.9 - .5 = 2.3
    assert torch.allclose(net.logits(x)[0], torch.tensor([3.4, 2.3]), atol=1e-5)
    p0 = 1.0 / (1.0 + math.exp(-1.1))
    assert torch.allclose(net(x)[0], torch.tensor([p0, 1 - p0]), atol=1e-6)


def test_batchnorm_route_shortcut_semantics() -> None:
    cfg = """[net]
width=3
height=3
channels=2
[convolutional]
filters=2
size=1
stride=1
batch_normalize=1
activation=relu
[shortcut]
from=-2
activation=linear
[route]
layers=-1,0
[avgpool]
"""
    # from=-2 at layer 1 is layer -1: not an earlier layer -> refused
    with pytest.raises(KernelfiError, match="not an earlier layer"):
        build_layers(parse_cfg(cfg))
    cfg = cfg.replace("from=-2", "from=0")
    layers, shape = build_layers(parse_cfg(cfg))
    assert [l.out_shape for l in layers] == [(2, 3, 3), (2, 3, 3), (4, 3, 3), (4, 1, 1)]
    assert layers[1].inputs == (0, 0) and layers[2].inputs == (1, 0)
    state = random_state(layers, seed=3)
    net = DarknetNet(layers, state, shape)
    x = torch.randn(2, *shape)
    w = state["layers.0.weights"]
    y = torch.einsum("oc,bchw->bohw", w, x)
    r = lambda k: state[f"layers.0.{k}"].view(1, -1, 1, 1)  # noqa: E731
    y = (y - r("rolling_mean")) / torch.sqrt(r("rolling_variance") + 1e-5) * r("scales") + r("biases")
    y = y * (y > 0)
    outs = net.layer_outputs(x)
    assert torch.allclose(outs[0], y, atol=1e-5)
    assert torch.allclose(outs[2], torch.cat([2 * y, y], dim=1), atol=1e-5)
    assert torch.allclose(outs[3], torch.cat([2 * y, y], dim=1).mean(dim=(2, 3), keepdim=True), atol=1e-5)


def _darknet_maxpool_loop(x: torch.Tensor, size: int, stride: int, pad: int) -> torch.Tensor:
    """forward_maxpool_layer_kernel, transcribed literally (C division, -INFINITY, val > max)."""
    c, h, w = x.shape
    out_h, out_w = int((h + pad - size) / stride) + 1, int((w + pad - size) / stride) + 1  # C division
    off = -(pad // 2)  # C: -pad/2 truncates toward zero
    out = torch.empty(c, out_h, out_w)
    for k in range(c):
        for i in range(out_h):
            for j in range(out_w):
                best = -math.inf
                for n in range(size):
                    for m in range(size):
                        hh, ww = off + i * stride + n, off + j * stride + m
                        val = float(x[k, hh, ww]) if 0 <= hh < h and 0 <= ww < w else -math.inf
                        best = val if val > best else best
                out[k, i, j] = best
    return out


def _darknet_conv_loop(x: torch.Tensor, wts: torch.Tensor, size: int, stride: int, pad: int) -> torch.Tensor:
    """im2col_gpu_kernel + gemm, transcribed: zero outside the image, rows c*k*k + kh*k + kw."""
    c, h, w = x.shape
    out_h, out_w = int((h + 2 * pad - size) / stride) + 1, int((w + 2 * pad - size) / stride) + 1
    cols = torch.zeros(c * size * size, out_h * out_w)
    for cc in range(c):
        for kh in range(size):
            for kw in range(size):
                for i in range(out_h):
                    for j in range(out_w):
                        hh, ww = i * stride + kh - pad, j * stride + kw - pad
                        if 0 <= hh < h and 0 <= ww < w:
                            cols[(cc * size + kh) * size + kw, i * out_w + j] = x[cc, hh, ww]
    return (wts @ cols).reshape(-1, out_h, out_w)


@pytest.mark.parametrize("size, stride, padding", [(2, 2, 1), (3, 2, 2), (4, 1, 3), (3, 3, 0), (2, 1, 5), (8, 3, 0)])
def test_maxpool_matches_darknet_kernel_loop(size: int, stride: int, padding: int) -> None:
    cfg = f"[net]\nwidth=7\nheight=6\nchannels=2\n[maxpool]\nsize={size}\nstride={stride}\npadding={padding}\n"
    layers, shape = build_layers(parse_cfg(cfg))
    x = torch.randn(*shape)
    x[0, 1, 2] = float("nan")
    x[1, 0, 0] = float("-inf")
    net = DarknetNet(layers, {}, shape)
    ref = _darknet_maxpool_loop(x, size, stride, padding)
    assert layers[0].out_shape == tuple(ref.shape)
    assert torch.equal(net(x.unsqueeze(0))[0], ref)


@pytest.mark.parametrize("size, stride, pad_flag", [(3, 2, 1), (2, 2, 1), (5, 3, 1), (3, 1, 0), (4, 3, 1), (8, 3, 0)])
def test_conv_matches_darknet_im2col_loop(size: int, stride: int, pad_flag: int) -> None:
    cfg = (f"[net]\nwidth=7\nheight=6\nchannels=2\n[convolutional]\nfilters=3\nsize={size}\n"
           f"stride={stride}\npad={pad_flag}\nactivation=linear\n")
    layers, shape = build_layers(parse_cfg(cfg))
    state = random_state(layers, seed=4)
    net = DarknetNet(layers, state, shape)
    x = torch.randn(*shape)
    ref = _darknet_conv_loop(x, state["layers.0.weights"], size, stride, layers[0].params["pad"])
    ref = ref + state["layers.0.biases"].view(-1, 1, 1)
    assert layers[0].out_shape == tuple(ref.shape)
    assert torch.allclose(net(x.unsqueeze(0))[0], ref, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# Weights
# ------------------------------------------------------------------------------------------------
BN_NET = """[net]
width=5
height=5
channels=3
[convolutional]
filters=4
size=3
stride=2
pad=1
groups=1
batch_normalize=1
activation=leaky
[convolutional]
filters=4
size=1
groups=2
activation=logistic
[connected]
output=3
batch_normalize=1
activation=relu
[connected]
output=2
activation=linear
[softmax]
"""


@pytest.mark.parametrize("version", [(0, 2, 0), (0, 1, 0), (1001, 0, 0)])
def test_weights_round_trip(tmp_path: Path, version: tuple[int, int, int]) -> None:
    layers, shape = build_layers(parse_cfg(BN_NET))
    state = random_state(layers, seed=7)
    path = tmp_path / "net.weights"
    write_weights(path, layers, state, version=version)
    back = read_weights(path, layers)
    assert set(back) == set(state)
    for k in state:
        assert back[k].shape == state[k].shape and torch.equal(back[k], state[k]), k
    n_floats = sum(t.numel() for t in state.values())
    header = 20 if version == (0, 2, 0) else 16
    assert path.stat().st_size == header + 4 * n_floats
    net = DarknetNet(layers, back, shape)
    assert net(torch.rand(1, *shape)).shape == (1, 2)


def test_weights_file_order_is_darknets(tmp_path: Path) -> None:
    """conv: biases, BN trio, weights; connected: biases, weights, BN trio."""
    layers, _ = build_layers(parse_cfg(BN_NET))
    state = random_state(layers, seed=1)
    path = tmp_path / "order.weights"
    write_weights(path, layers, state)
    raw = path.read_bytes()
    major, minor, revision, seen = struct.unpack("<iiiQ", raw[:20])
    assert (major, minor, revision, seen) == (0, 2, 0, 0)
    floats = torch.frombuffer(bytearray(raw[20:]), dtype=torch.float32)
    order = [("layers.0", ["biases", "scales", "rolling_mean", "rolling_variance", "weights"]),
             ("layers.1", ["biases", "weights"]),
             ("layers.2", ["biases", "weights", "scales", "rolling_mean", "rolling_variance"]),
             ("layers.3", ["biases", "weights"])]
    expected = torch.cat([state[f"{name}.{role}"].flatten() for name, roles in order for role in roles])
    assert torch.equal(floats, expected)
    assert state["layers.0.weights"].shape == (4, 3 * 3 * 3)
    assert state["layers.1.weights"].shape == (4, 2 * 1 * 1)   # groups=2
    assert state["layers.2.weights"].shape == (3, 4 * 3 * 3)


def test_truncated_weights_names_file_and_layer(tmp_path: Path) -> None:
    layers, _ = build_layers(parse_cfg(ALEXNET))
    path = tmp_path / "alex.weights"
    path.write_bytes(struct.pack("<iiiQ", 0, 2, 0, 0) + b"\0" * 4 * 1000)
    with pytest.raises(KernelfiError) as exc:
        read_weights(path, layers)
    msg = str(exc.value)
    need = 96 + 96 * 3 * 11 * 11
    assert msg == f"{path}: truncated: layer 0 (convolutional) needs {need} floats, only 1000 left"
    assert "\n" not in msg


def test_trailing_bytes_are_an_error_unless_allowed(tmp_path: Path) -> None:
    layers, _ = build_layers(parse_cfg(TINY))
    path = tmp_path / "tiny.weights"
    write_weights(path, layers, _tiny_state())
    path.write_bytes(path.read_bytes() + b"\0" * 8)
    with pytest.raises(KernelfiError, match=r"tiny\.weights: 8 trailing bytes after layer 2 \(connected\)"):
        read_weights(path, layers)
    assert set(read_weights(path, layers, allow_trailing=True)) == set(_tiny_state())


def test_load_darknet_with_weights(tmp_path: Path) -> None:
    cfg = tmp_path / "tiny.cfg"
    cfg.write_text(TINY)
    layers, _ = build_layers(parse_cfg(cfg))
    write_weights(tmp_path / "tiny.weights", layers, _tiny_state())
    net = load_darknet(cfg, tmp_path / "tiny.weights")
    x = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4)
    assert torch.allclose(net.logits(x)[0], torch.tensor([3.4, 2.3]), atol=1e-5)
    # seeded random weights are reproducible
    a, b = load_darknet(cfg, seed=5), load_darknet(cfg, seed=5)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())


# ------------------------------------------------------------------------------------------------
# cfg errors: one line, file and line number
# ------------------------------------------------------------------------------------------------
def test_unknown_section_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.cfg"
    path.write_text(TINY.replace("[maxpool]", "[foo]"))
    line = TINY.splitlines().index("[maxpool]") + 1
    with pytest.raises(KernelfiError) as exc:
        parse_cfg(path)
    assert str(exc.value) == f"{path}:{line}: unknown section [foo]"


@pytest.mark.parametrize("edit, pattern", [
    (("size=3", "size=3x"), r"<cfg>:8: \[convolutional\] bad integer value size='3x'"),
    (("activation=leaky", "activation=ramp"), r"<cfg>:11: .*unsupported option value activation='ramp'"),
    (("[net]", "[crop]"), r"<cfg>:1: .*Darknet layer kernelfi does not support"),
    (("[net]\n", ""), r"<cfg>:1: missing \[net\]"),
    (("[softmax]", "[softmax]\ngroups=2"), r"<cfg>:22: .*groups=2"),
    (("pad=1", "dilation=2"), r"<cfg>:10: .*unsupported option value dilation=2"),
    (("output=2", "outptu=2"), r"<cfg>:18: \[connected\] unknown option 'outptu'"),
])
def test_cfg_errors(edit: tuple[str, str], pattern: str) -> None:
    text = TINY.replace(edit[0], edit[1], 1)
    with pytest.raises(KernelfiError, match=pattern) as exc:
        build_layers(parse_cfg_text(text))
    assert "\n" not in str(exc.value)


def test_shape_errors() -> None:
    base = "[net]\nwidth=8\nheight=8\nchannels=2\n[convolutional]\nfilters=4\nsize=1\n" \
           "[maxpool]\nsize=2\nstride=2\npadding=0\n"
    # Darknet's shortcut_gpu asserts w1/w2 == h1/h2: a 3x8 map onto its 1x4 pooling is refused
    # (8/4 = 2 but 3/1 = 3); an 8x8 map onto 4x4 is Darknet's strided shortcut, accepted
    flat = base.replace("height=8", "height=3")
    with pytest.raises(KernelfiError, match=r"<cfg>:13: \[shortcut\] from=0 adds layer 0's output "
                                            r"\(4, 3, 8\) to layer 1's output \(4, 1, 4\): the width and "
                                            r"height ratios differ"):
        build_layers(parse_cfg(flat + "[shortcut]\nfrom=0\n"))
    layers, _ = build_layers(parse_cfg(base + "[shortcut]\nfrom=0\n"))
    assert layers[2].out_shape == (4, 4, 4) and layers[2].params["add_shape"] == (4, 8, 8)
    with pytest.raises(KernelfiError, match=r"<cfg>:13: \[route\] .*different spatial size"):
        build_layers(parse_cfg(base + "[route]\nlayers=-1, 0\n"))
    with pytest.raises(KernelfiError, match=r"does not fit"):
        build_layers(parse_cfg(base + "[convolutional]\nsize=7\n"))
    with pytest.raises(KernelfiError, match=r"groups=3 does not divide"):
        build_layers(parse_cfg(base + "[convolutional]\nfilters=3\ngroups=3\n"))


def test_darknet_lexing_details() -> None:
    """Whitespace anywhere is dropped, comments, aliases, trailing [cost], input_shape override."""
    text = ("[ network ]\n width = 6\nheight=6 # inline\nchannels=1\n; comment\n"
            "[conv]\nfilters = 2\nsize=3\nactivation=linear\n[avg]\n[cost]\ntype=sse\n")
    layers, shape = build_layers(parse_cfg(text))
    assert shape == (1, 6, 6) and [l.type for l in layers] == ["convolutional", "avgpool"]
    assert layers[0].out_shape == (2, 4, 4) and layers[0].params["activation"] == "linear"
    layers, shape = build_layers(parse_cfg(text), input_shape=(1, 10, 10))
    assert layers[0].out_shape == (2, 8, 8)
    # Darknet's defaults: conv and connected activations default to logistic
    layers, _ = build_layers(parse_cfg("[net]\nwidth=2\nheight=2\nchannels=1\n[connected]\noutput=3\n"))
    assert layers[0].params["activation"] == "logistic"


# ------------------------------------------------------------------------------------------------
# Fuzzing: nothing but KernelfiError escapes
# ------------------------------------------------------------------------------------------------
ALEX_TEXT = ALEXNET.read_text()
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _parse_and_build(text: str) -> None:
    try:
        build_layers(parse_cfg_text(text))
    except KernelfiError as exc:
        assert "\n" not in str(exc)


@FUZZ
@given(st.text(max_size=300))
def test_fuzz_cfg_random_text(text: str) -> None:
    _parse_and_build(text)
    _parse_and_build("[net]\nwidth=4\nheight=4\nchannels=1\n" + text)


_pieces = st.sampled_from(["[", "]", "=", "\n", "-", "0", "1", "-1", "99999999999", "#", ",", " ",
                           "[route]\nlayers=", "[shortcut]\nfrom=", "[maxpool]\n", "[conv]\n",
                           "size=", "stride=0", "padding=", "groups=", "filters=", "\x00", "é"])


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(ALEX_TEXT)), st.integers(0, 12),
                          st.one_of(_pieces, st.text(max_size=6))), min_size=1, max_size=6))
def test_fuzz_cfg_mutations(edits: list[tuple[int, int, str]]) -> None:
    text = ALEX_TEXT
    for pos, cut, insert in edits:
        pos = min(pos, len(text))
        text = text[:pos] + insert + text[pos + cut:]
    _parse_and_build(text)


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(["filters", "size", "stride", "pad", "padding", "output",
                                           "groups", "from", "layers", "activation", "batch_normalize",
                                           "temperature", "probability", "width", "height"]),
                          st.one_of(st.integers(-40, 40).map(str), st.text(max_size=5))),
                min_size=1, max_size=4),
       st.lists(st.sampled_from(["[route]\nlayers=-2,-1\n", "[shortcut]\nfrom=-3\n",
                                 "[avgpool]\n", "[convolutional]\nsize=3\n", "[dropout]\n",
                                 "[softmax]\n", "[connected]\n"]), max_size=3))
def test_fuzz_cfg_option_values(values: list[tuple[str, str]], extra: list[str]) -> None:
    lines = ALEX_TEXT.splitlines()
    for key, value in values:
        idx = [i for i, l in enumerate(lines) if l.startswith(key + "=")]
        if idx:
            lines[idx[len(value) % len(idx)]] = f"{key}={value}"
    _parse_and_build("\n".join(lines).replace("[softmax]", "".join(extra) + "[softmax]"))


_FUZZ_LAYERS = build_layers(parse_cfg(BN_NET))[0]
_FUZZ_STATE = random_state(_FUZZ_LAYERS, seed=2)
_FUZZ_DIR = Path(tempfile.mkdtemp(prefix="kernelfi-darknet-fuzz-"))
_good = _FUZZ_DIR / "good.weights"
write_weights(_good, _FUZZ_LAYERS, _FUZZ_STATE)
GOOD_BYTES = _good.read_bytes()


def _read(raw: bytes) -> None:
    path = _FUZZ_DIR / "fuzz.weights"
    path.write_bytes(raw)
    try:
        state = read_weights(path, _FUZZ_LAYERS)
    except KernelfiError as exc:
        assert "\n" not in str(exc) and str(path) in str(exc)
    else:
        assert set(state) == set(_FUZZ_STATE)


@FUZZ
@given(st.binary(max_size=600))
def test_fuzz_weights_random_bytes(raw: bytes) -> None:
    _read(raw)


@FUZZ
@given(st.integers(0, len(GOOD_BYTES) + 16), st.binary(max_size=16),
       st.integers(-5, 1005), st.integers(-5, 1005))
def test_fuzz_weights_truncation_and_header(cut: int, tail: bytes, major: int, minor: int) -> None:
    raw = struct.pack("<ii", major, minor) + GOOD_BYTES[8:]
    _read(raw[:cut] + tail)
