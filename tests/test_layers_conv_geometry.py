"""Issue 20 convolution geometry: non-square kernels, strides, paddings and dilations and
padding='same' as im2col's width-axis parameters: lowered models equal their native forward,
padding='same' of an even kernel as im2col's bottom/right padding (``pad_h_after``,
``pad_w_after``); a fault in a (1, 3) im2col and one in an asymmetric 2x2 one corrupt what was
worked out on paper."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from kernelfi.lowering import lower
from kernelfi.types import Fault
from tests.tiny import probs_of, run_one, site

CONVS = [nn.Conv2d(2, 3, (1, 3), padding=(0, 1)), nn.Conv2d(2, 3, (3, 1), padding=(1, 0)),
         nn.Conv2d(2, 3, 3, padding="same"), nn.Conv2d(2, 3, (1, 5), padding="same"),
         nn.Conv2d(2, 3, 3, stride=(2, 1), padding=(1, 2)), nn.Conv2d(2, 3, 3, dilation=(1, 2), padding="same"),
         nn.Conv2d(2, 4, (1, 3), padding=(0, 1), groups=2), nn.Conv2d(2, 3, 1, stride=(2, 1)),
         nn.Conv2d(2, 3, 3, padding="valid"), nn.Conv2d(2, 3, 2, padding="same"),
         nn.Conv2d(2, 3, (2, 3), padding="same"), nn.Conv2d(2, 3, (2, 4), dilation=(3, 1), padding="same"),
         nn.Conv2d(2, 4, 2, padding="same", groups=2)]


@pytest.mark.parametrize("conv", CONVS, ids=repr)
def test_lowered_equals_native(conv: nn.Conv2d) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(conv, nn.BatchNorm2d(conv.out_channels), nn.ReLU(), nn.Flatten()).eval()
    prog = lower(net, (2, 7, 6))
    x = torch.randn(2, 2, 7, 6)
    with torch.no_grad():
        ref = net(x)
    for fast in (True, False):
        assert (prog.forward(x, fast=fast)[0] - ref).abs().max().item() <= 1e-5 * max(ref.abs().max().item(), 1.0)


def test_square_layers_keep_their_params() -> None:
    prog = lower(nn.Sequential(nn.Conv2d(1, 1, 3, padding="same")).eval(), (1, 4, 4))
    im = next(l for l in prog.trace.launches if l.kernel == "im2col")
    assert not {"ksize_w", "stride_w", "pad_w", "dilation_w"} & set(im.params) and im.params["pad"] == 1


def _two_by_two_same() -> nn.Module:
    """Conv2d(1, 1, 2, padding='same') with weights [[1, 2], [4, 8]]/16, bias 0: PyTorch pads
    0 before and 1 after on each axis (total k-1 = 1), so out[i, j] = (x[i, j] + 2 x[i, j+1]
    + 4 x[i+1, j] + 8 x[i+1, j+1])/16 with x zero past the bottom and right edges."""
    conv = nn.Conv2d(1, 1, 2, padding="same")
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[1.0, 2.0], [4.0, 8.0]]).reshape(1, 1, 2, 2) / 16)
        conv.bias.zero_()
    return nn.Sequential(conv, nn.Flatten()).eval()


#: x = [[1, 2, 3], [4, 5, 6], [7, 8, 9]] through _two_by_two_same, on paper: 16 out =
#: [1+4+16+40, 2+6+20+48, 3+24, 4+10+28+64, 5+12+32+72, 6+36, 7+16, 8+18, 9]
SAME_2X2 = [v / 16 for v in (61.0, 76.0, 27.0, 106.0, 121.0, 42.0, 23.0, 26.0, 9.0)]


def test_same_of_an_even_kernel_pads_after() -> None:
    net = _two_by_two_same()
    prog = lower(net, (1, 3, 3))
    im = next(l for l in prog.trace.launches if l.kernel == "im2col")
    # square otherwise: only the bottom/right padding is added to Darknet's params
    assert (im.params["pad"], im.params["pad_h_after"], im.params["pad_w_after"]) == (0, 1, 1)
    assert not {"ksize_w", "stride_w", "pad_w", "dilation_w"} & set(im.params)
    assert (im.params["out_h"], im.params["out_w"]) == (3, 3)
    x = torch.arange(1.0, 10.0).reshape(1, 1, 3, 3)
    for fast in (True, False):
        assert prog.forward(x, fast=fast)[0][0].tolist() == SAME_2X2
    with torch.no_grad():
        assert net(x)[0].tolist() == SAME_2X2


def test_asymmetric_im2col_fault_in_the_after_padding() -> None:
    # thread 2 is output (0, 2); its taps (0, 0), (0, 1), (1, 0), (1, 1) read x[0, 2] = 3,
    # x[0, 3] (the right padding: 0), x[1, 2] = 6, x[1, 3] (padding: 0). Execution 1 of
    # sel:value is the padded 0.0; bit 30 flipped is 0x40000000 = 2.0, times weight 2/16:
    # out[0, 2] = (27 + 4)/16 = 31/16. The top-1 (out[1, 1]) is unchanged.
    prog = lower(_two_by_two_same(), (1, 3, 3))
    x = torch.arange(1.0, 10.0).reshape(1, 1, 3, 3)
    im = next(l for l in prog.trace.launches if l.kernel == "im2col")
    r, probs = run_one(prog, Fault("iov", site(prog, im.name, "sel:value", 2, exec_=1, calls=4), "single", (30,)), x)
    assert (r.original, r.corrupted) == (0.0, 2.0)
    want = list(SAME_2X2)
    want[2] = 31.0 / 16
    assert torch.allclose(probs, probs_of(want), atol=1e-7)
    assert (r.golden_top1, r.faulty_top1) == (4, 4) and r.outcome == "sdc_light_malfunction"


def test_one_by_three_im2col_fault() -> None:
    # (1, 3) conv, padding (0, 1), weights [1, 10, 100], bias 0 on x = [[1, 2, 3]] (1x1x3):
    # out[j] = x[j-1] + 10 x[j] + 100 x[j+1] = [210, 321, 32]. Thread 1 (output column 1) stores
    # its column entries x[0], x[1], x[2] = 1, 2, 3; entry j=2 (3.0 = 0x40400000) with bit 22
    # flipped is 0x40000000 = 2.0: out[1] = 1 + 20 + 200 = 221.
    conv = nn.Conv2d(1, 1, (1, 3), padding=(0, 1))
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, 10.0, 100.0]).reshape(1, 1, 1, 3))
        conv.bias.zero_()
    prog = lower(nn.Sequential(conv, nn.Flatten()).eval(), (1, 1, 3))
    x = torch.tensor([[[[1.0, 2.0, 3.0]]]])
    assert prog.forward(x)[0][0].tolist() == [210.0, 321.0, 32.0]
    im = next(l for l in prog.trace.launches if l.kernel == "im2col")
    assert im.template.slots[[s.tag for s in im.template.slots].index("ld:im")].count == 3
    r, probs = run_one(prog, Fault("iov", site(prog, im.name, "sel:value", 1, exec_=2, calls=3), "single", (22,)), x)
    assert (r.original, r.corrupted) == (3.0, 2.0)
    assert torch.allclose(probs, probs_of([210.0, 221.0, 32.0]), atol=1e-7)
    assert (r.golden_top1, r.faulty_top1) == (1, 1) and r.outcome == "sdc_light_malfunction"
