"""Issue 20 convolution geometry: non-square kernels, strides, paddings and dilations and
padding='same' as im2col's width-axis parameters: lowered models equal their native forward,
padding='same' of an even kernel as im2col's bottom/right padding (``pad_h_after``,
``pad_w_after``); a fault in a (1, 3) im2col and one in an asymmetric 2x2 one corrupt what was
worked out on paper. Dilated im2col (PyTorch's dilated im2col_kernel, its own template and
register count): every thread's replay rebuilds ``F.unfold``'s columns, faults in a replayed
dilated thread corrupt the entries worked out by hand, a short campaign per mode on a dilated
model has no tool error."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from kernelfi.campaign import CampaignConfig, ModelSpec, run_campaign
from kernelfi.faults.memmap import MemoryMap
from kernelfi.faults.programs import PROGRAMS
from kernelfi.faults.replay import F32, Target, ThreadCtx
from kernelfi.kernels import get_kernel, ptxas_registers
from kernelfi.lowering import lower
from kernelfi.models import list_models, register_model
from kernelfi.store import Store
from kernelfi.types import BufferSpec, Fault, Launch, ThreadTemplate, Trace
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


# --------------------------------------------------------------------------------------------
# Dilated im2col
def _im2col_params(c: int, h: int, w: int, k: tuple[int, int], st: tuple[int, int], pad: tuple[int, int],
                   dil: tuple[int, int]) -> dict[str, Any]:
    """An im2col launch's params as the lowering writes them (the width axis only where it differs)."""
    oh = (h + 2 * pad[0] - dil[0] * (k[0] - 1) - 1) // st[0] + 1
    ow = (w + 2 * pad[1] - dil[1] * (k[1] - 1) - 1) // st[1] + 1
    p: dict[str, Any] = {"channels": c, "height": h, "width": w, "ksize": k[0], "stride": st[0], "pad": pad[0],
                         "dilation": dil[0], "out_h": oh, "out_w": ow, "channel_offset": 0, "group_channels": c}
    if (k[0], st[0], pad[0], dil[0]) != (k[1], st[1], pad[1], dil[1]):
        p.update(ksize_w=k[1], stride_w=st[1], pad_w=pad[1], dilation_w=dil[1])
    return p


def _replay(p: dict[str, Any], x: torch.Tensor, thread: int, target: Target | None = None) -> tuple[dict[int, float], ThreadCtx]:
    """One im2col thread replayed on image ``x`` (flat): the column entries it stores."""
    n_col = p["channels"] * p["ksize"] * p.get("ksize_w", p["ksize"]) * p["out_h"] * p["out_w"]
    specs = (BufferSpec("im", (x.numel(),), "activation"), BufferSpec("col", (n_col,), "activation"))
    memmap = MemoryMap.from_trace(Trace("t", (1,), (), specs, (), "im", "col"))
    flat = x.reshape(-1).tolist()
    ctx = ThreadCtx(memmap, lambda b, i: F32(flat[i]) if b == "im" else F32(-99.0), {"im": "im", "col": "col"},
                    target=target)
    PROGRAMS["im2col"](ctx, p, thread)
    return {i: float(v) for (b, i), v in ctx.overlay.items() if b == "col"}, ctx


#: 1 channel, 5x5, k=2, dilation 2, pad 1 (out 5x5): x[r, c] = 5r + c + 1
HAND = _im2col_params(1, 5, 5, (2, 2), (1, 1), (1, 1), (2, 2))
HAND_X = torch.arange(1.0, 26.0).reshape(1, 1, 5, 5)


@pytest.mark.parametrize("geom", [((2, 2), (1, 1), (1, 1), (2, 2)), ((3, 2), (1, 2), (2, 1), (2, 3)),
                                  ((2, 3), (2, 1), (0, 2), (1, 2)), ((3, 3), (1, 1), (1, 1), (1, 1))], ids=repr)
def test_every_replayed_thread_rebuilds_unfolds_columns(geom: tuple[tuple[int, int], ...]) -> None:
    """A fault-free replay of every thread writes exactly F.unfold's columns (dilated or not), and
    the kernel's ``run`` agrees; dilated launches count a multiply per coordinate and per tap."""
    k, st, pad, dil = geom
    c, h, w = 2, 7, 6
    p = _im2col_params(c, h, w, k, st, pad, dil)
    x = torch.randn(1, c, h, w, generator=torch.Generator().manual_seed(1))
    want = F.unfold(x, k, dilation=dil, padding=pad, stride=st).reshape(-1)
    got = torch.full_like(want, float("nan"))
    kern = get_kernel("im2col")
    slots = {s.tag: s.count for s in kern.template(p).slots}
    for t in range(kern.template(p).threads):
        cols, ctx = _replay(p, x, t)
        for i, v in cols.items():
            assert got[i].isnan(), f"entry {i} written twice"
            got[i] = v
        if dil != (1, 1):
            assert ctx.calls["imad:hw"] == slots["imad:hw"] == 2 * k[0] * k[1]
            assert ctx.calls["imad:im_elem"] == slots["imad:im_elem"] == k[0] * k[1]
            assert "iadd:hw" not in slots
        else:
            assert ctx.calls["iadd:hw"] == slots["iadd:hw"] and "imad:im_elem" not in slots
    assert torch.equal(got, want)
    mem = {"im": x.reshape(1, -1)}
    kern.run(mem, Launch(0, 0, "t", "t", "im2col", ("im",), ("col",), p, template=ThreadTemplate(0, 1, ())))
    assert torch.equal(mem["col"].reshape(-1), want)


def test_dilated_launches_have_their_own_registers() -> None:
    """ptxas' count for im2col_dilated (40 on sm_50) against Darknet's im2col (32): the undilated
    launch keeps its map; the dilated one adds the tap offset register."""
    kern = get_kernel("im2col")
    plain = _im2col_params(1, 5, 5, (2, 2), (1, 1), (1, 1), (1, 1))
    assert (ptxas_registers("im2col"), ptxas_registers("im2col_dilated")) == (32, 40)
    rp, rd = kern.registers(plain), kern.registers(HAND)
    assert rp.allocated == 32 + 3 and rd.allocated == 40 + 3  # p_bounds, p_pad, p_loop
    assert {r.name for r in rd.registers} - {r.name for r in rp.registers} == {"r_tap"}
    assert next(r.tag for r in rd.registers if r.name == "r_hw") == "imad:hw"


def test_dilated_replay_faults_corrupt_the_entries_worked_out_by_hand() -> None:
    """HAND (x[r, c] = 5r + c + 1; column entry (tap, n) at tap*25 + n):
    - thread 6 is output (1, 1): window origin (0, 0), taps at (0, 0), (0, 2), (2, 0), (2, 2) =
      1, 3, 11, 13, tap offsets 0, 2, 10, 12. Bit 0 of the last offset flipped: 13 reads
      (2, 3) = 14, so only entry 3*25 + 6 changes, 13 -> 14.
    - thread 0 is output (0, 0): origin (-1, -1), taps (-1, -1), (-1, 1), (1, -1) in the padding
      and (1, 1) = 7. Load 3 is 7.0 (0x40E00000); bit 23 flipped: 0x40600000 = 3.5 at entry
      3*25 + 0. Load 1 is predicated off (padding): flipping it changes nothing.
    - thread 12 is output (2, 2): origin (1, 1), taps (1, 1), (1, 3), (3, 1), (3, 3) = 7, 9, 17,
      19. Bit 1 of tap 1's column coordinate w = 1 + 1*2 = 3 -> 1: still inside the image, so the
      padding test passes and the load (by tap offset) still reads 9: nothing changes."""
    clean6, _ = _replay(HAND, HAND_X, 6)
    assert [clean6[tap * 25 + 6] for tap in range(4)] == [1.0, 3.0, 11.0, 13.0]
    bad6, ctx = _replay(HAND, HAND_X, 6, Target("imad:im_elem", 3, "iov", "single", (0,)))
    assert (ctx.original, ctx.corrupted) == (12.0, 13.0)
    assert {i for i in clean6 if clean6[i] != bad6[i]} == {3 * 25 + 6} and bad6[3 * 25 + 6] == 14.0

    clean0, _ = _replay(HAND, HAND_X, 0)
    assert [clean0[tap * 25] for tap in range(4)] == [0.0, 0.0, 0.0, 7.0]
    bad0, _ = _replay(HAND, HAND_X, 0, Target("ld:im", 3, "iov", "single", (23,)))
    assert {i for i in clean0 if clean0[i] != bad0[i]} == {3 * 25} and bad0[3 * 25] == 3.5
    assert _replay(HAND, HAND_X, 0, Target("ld:im", 1, "iov", "single", (23,)))[0] == clean0

    clean12, _ = _replay(HAND, HAND_X, 12)
    assert [clean12[tap * 25 + 12] for tap in range(4)] == [7.0, 9.0, 17.0, 19.0]
    # imad:hw executes h then w per tap: execution 3 is tap 1's w
    bad12, ctx = _replay(HAND, HAND_X, 12, Target("imad:hw", 3, "iov", "single", (1,)))
    assert (ctx.original, ctx.corrupted) == (3.0, 1.0) and bad12 == clean12


def _dilated_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(2, 4, 3, dilation=2, padding=2), nn.ReLU(),
                         nn.Conv2d(4, 4, (2, 3), dilation=(2, 1), padding=(1, 1)), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 8 * 8, 3))


def test_dilated_model_lowers_exactly() -> None:
    torch.manual_seed(0)
    net = _dilated_net().eval()
    prog = lower(net, (2, 8, 8))
    ims = [l for l in prog.trace.launches if l.kernel == "im2col"]
    assert [(l.params["dilation"], l.params.get("dilation_w")) for l in ims] == [(2, None), (2, 1)]
    x = torch.randn(3, 2, 8, 8)
    with torch.no_grad():
        ref = net(x)
    for fast in (True, False):
        assert (prog.forward(x, fast=fast)[0] - ref).abs().max().item() <= 1e-5 * max(ref.abs().max().item(), 1.0)


DILATED = "issue20-dilated-conv"


def build_dilated(num_classes: int) -> nn.Module:
    """The registered builder: top level, so worker processes can import it."""
    torch.manual_seed(0)
    return _dilated_net()


@pytest.mark.parametrize("mode", ["rf", "iov", "ioa"])
def test_dilated_campaign_has_no_tool_error(mode: str, tmp_path: Path) -> None:
    if DILATED not in {m.name for m in list_models()}:
        register_model(DILATED, input_shape=(2, 8, 8), num_classes=3, mean=(0.5,) * 2, std=(0.25,) * 2,
                       description="dilated convolutions")(build_dilated)
    db = tmp_path / f"{mode}.db"
    n = 40
    cid = run_campaign(CampaignConfig(ModelSpec(DILATED), mode, "single", n=n, seed=5, data="random", inputs=3), str(db))
    with Store(str(db), create=False, readonly=True) as store:
        counts = store.outcome_counts(cid)
        kernels = [store.injection(cid, i).kernel for i in range(n)]
    assert sum(counts.values()) == n
    assert counts.get("tool_error", 0) == 0, counts
    assert "im2col" in kernels  # the dilated im2col threads were struck
