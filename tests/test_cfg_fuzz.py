"""Every cfg the fuzzer writes lowers to kernels and runs its golden pass (and a few faults,
without a tool error), or is refused in one line: small networks of every layer type with
sizes around the edges of what is valid, built, lowered and run end to end."""
from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernelfi._utils import KernelfiError
from kernelfi.execution import Golden
from kernelfi.campaign.isolate import ToolError, run_batch
from kernelfi.campaign.planner import Planner
from kernelfi.execution import Runner
from kernelfi.lowering import lower
from kernelfi.models.darknet import build_layers, parse_cfg_text
from kernelfi.models.darknet_net import DarknetNet, random_state

def _mostly(valid: list[str], odd: list[str]) -> st.SearchStrategy[str]:
    """Valid values four times as often as the edges and the nonsense."""
    return st.sampled_from(valid * 4 + odd)


_count = _mostly(["1", "2", "3", "4"], ["0", "-1", "x"])
_size = _mostly(["1", "2", "3"], ["0", "5", "-1"])
_stride = _mostly(["1", "2"], ["0", "3"])
_act = _mostly(["relu", "leaky", "linear", "logistic"], ["relie", "tanh"])


def _section(name: str, required: dict[str, st.SearchStrategy[str]] | None = None,
             **opts: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """``[name]`` with its ``required`` options and each of the others present or not."""
    return st.fixed_dictionaries(required or {}, optional=opts).map(
        lambda d: f"[{name}]\n" + "".join(f"{k}={v}\n" for k, v in d.items()))


SECTIONS = st.one_of(
    _section("convolutional", {"filters": _count}, size=_size, stride=_stride, pad=st.sampled_from(["0", "1"]),
             padding=_mostly(["0", "1"], ["-1", "3"]), groups=_mostly(["1"], ["2"]),
             batch_normalize=st.sampled_from(["0", "1"]), activation=_act),
    _section("connected", {"output": _count}, batch_normalize=st.sampled_from(["0", "1"]), activation=_act),
    _section("maxpool", size=_size, stride=_stride, padding=_mostly(["0", "1"], ["-1", "4"])),
    _section("avgpool"),
    _section("shortcut", {"from": _mostly(["-2", "-3"], ["-1", "0", "9"])}, activation=_act),
    _section("route", {"layers": _mostly(["-1", "-2", "-1,-2"], ["0", "-1,-9", "1"])}),
    _section("dropout", probability=_mostly(["0.5", "0"], ["1", "x"])),
    _section("softmax", temperature=_mostly(["1", "0.5"], ["0"])),
)
NET = st.tuples(_mostly(["4", "6", "7"], ["0", "1"]), _mostly(["4", "5", "8"], ["1"]), _mostly(["1", "3"], ["0", "2"])).map(
    lambda t: f"[net]\nwidth={t[0]}\nheight={t[1]}\nchannels={t[2]}\n")


def _lower_and_run(text: str) -> None:
    try:
        layers, shape = build_layers(parse_cfg_text(text))
        net = DarknetNet(layers, random_state(layers, 0), shape)
        program = lower(net, shape, "fuzz")
    except KernelfiError as err:
        assert "\n" not in str(err)
        return
    x = torch.rand(2, *shape, generator=torch.Generator().manual_seed(0))
    golden = Golden.compute(program, x)
    assert torch.isfinite(golden.buffers[program.trace.output]).all() or True  # a golden NaN is the weights'
    runner = Runner(program, golden)
    for mode in ("iov", "ioa", "rf"):
        try:
            planner = Planner(program.trace, mode, "single", False, 1, 2)
        except KernelfiError:  # a trace with no site of this mode
            continue
        out = run_batch(runner, [planner.draw(i) for i in range(6)])
        errors = [e.error for e in out if isinstance(e, ToolError)]
        assert not errors, (text, mode, errors)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(NET, st.lists(SECTIONS, min_size=1, max_size=5))
def test_fuzz_cfg_lowers_runs_golden_and_faults(net: str, sections: list[str]) -> None:
    _lower_and_run(net + "".join(sections))


def test_the_issue_s_cfgs_lower_or_are_one_line() -> None:
    """A flat output read as a map: after a [connected] it is Darknet's F x 1 x 1 map (the
    lowering unpacked it as C, H, W: ValueError); after a [softmax] Darknet has no map (one line)."""
    head = "[net]\nwidth=8\nheight=8\nchannels=1\n[connected]\noutput=4\n"
    for tail in ("[maxpool]\nsize=2\nstride=2\n", "[convolutional]\nfilters=2\nsize=3\npad=1\n", "[avgpool]\n",
                 "[convolutional]\nfilters=3\nsize=1\n[connected]\noutput=2\n"):
        layers, shape = build_layers(parse_cfg_text(head + tail))
        program = lower(DarknetNet(layers, random_state(layers, 0), shape), shape, "flat")
        golden = Golden.compute(program, torch.rand(2, *shape, generator=torch.Generator().manual_seed(0)))
        out = golden.buffers[program.trace.output]
        assert out.shape[0] == 2 and torch.allclose(out.sum(1), torch.ones(2))
    for tail in ("[softmax]\n[convolutional]\nfilters=2\nsize=1\n", "[softmax]\n[avgpool]\n",
                 "[softmax]\n[maxpool]\nsize=1\n", "[softmax]\n[dropout]\n[convolutional]\nsize=1\n"):
        try:
            build_layers(parse_cfg_text(head + tail))
        except KernelfiError as err:
            assert "softmax's, which Darknet gives no map shape" in str(err) and "\n" not in str(err)
        else:
            raise AssertionError(tail)


def test_a_pool_window_wider_than_its_input_divides_as_c_does() -> None:
    """Found by the fuzzer: a 2x2 pool with stride 2 and no padding on the 1x1 map an avgpool
    leaves. Darknet's (1 + 0 - 2)/2 + 1 is 1 in C (the division truncates toward zero); the
    kernel checked it with Python's floor (0) and every fault in it was a tool error."""
    text = "[net]\nwidth=4\nheight=4\nchannels=1\n[avgpool]\n[maxpool]\nsize=2\npadding=0\nstride=2\n"
    layers, _ = build_layers(parse_cfg_text(text))
    assert layers[1].out_shape == (1, 1, 1)
    _lower_and_run(text)



def test_a_convolution_wider_than_its_padded_input_reads_zeros_past_the_edge() -> None:
    """Found by the fuzzer: a 2x2 kernel, stride 2, no padding, on the 1x1 map of a [connected]
    layer. Darknet's C division gives a 1x1 output and its im2col reads zeros past the edge:
    the output is w[0,0] * x + bias. The kernels checked the geometry with Python's floor
    (0 outputs) and ``F.unfold``/``F.conv2d`` refuse such a window; the lowered net now runs it."""
    text = ("[net]\nwidth=4\nheight=4\nchannels=1\n[connected]\noutput=1\nactivation=linear\n"
            "[convolutional]\nfilters=1\nsize=2\nstride=2\nactivation=linear\n")
    layers, shape = build_layers(parse_cfg_text(text))
    assert layers[1].out_shape == (1, 1, 1)
    state = random_state(layers, 0)
    net = DarknetNet(layers, state, shape)
    program = lower(net, shape, "edge")
    x = torch.rand(2, *shape, generator=torch.Generator().manual_seed(0))
    golden = Golden.compute(program, x)
    fc = x.reshape(2, -1) @ state["layers.0.weights"].t() + state["layers.0.biases"]
    conv = fc * state["layers.1.weights"].reshape(-1)[0] + state["layers.1.biases"]
    logits = golden.buffers[program.trace.logits].reshape(2, -1)
    assert torch.allclose(logits, conv.reshape(2, -1), atol=1e-6)
    _lower_and_run(text)
