"""The receptive-field cone: window geometry worked out by hand, and campaigns that give the
same rows, bit for bit, with the cone on and off."""
from __future__ import annotations

import math

import pytest
import torch

from kernelfi.lowering.crop import Window, fit, gather
from tiny import campaign_rows


def test_window_geometry_by_hand() -> None:
    conv = Window(size=3, stride=1, offset=-1, dil=1, n_in=8, n_out=8)  # 3x3, pad 1
    assert conv.outputs(3, 4) == (2, 5)          # rows 2, 3, 4 read input row 3
    assert conv.outputs(0, 1) == (0, 2)          # clipped at the border
    assert conv.inputs(2, 5) == (1, 6)
    assert conv.inputs(0, 8) == (-1, 9)          # one padding row each side
    down = Window(size=3, stride=2, offset=-1, dil=1, n_in=8, n_out=4)  # 3x3 stride 2 pad 1
    assert down.outputs(3, 4) == (1, 3)          # 2o-1 <= 3 <= 2o+1: o = 1, 2
    assert down.outputs(0, 1) == (0, 1)
    assert down.inputs(1, 3) == (1, 6)
    pool = Window(size=2, stride=2, offset=0, dil=1, n_in=8, n_out=4)
    assert pool.outputs(3, 4) == (1, 2) and pool.outputs(3, 5) == (1, 3)
    dil = Window(size=3, stride=1, offset=-2, dil=2, n_in=8, n_out=8)  # dilation 2, pad 2
    assert dil.outputs(4, 5) == (2, 7) and dil.inputs(2, 3) == (0, 5)


def test_gather_pads_and_pastes() -> None:
    plane = torch.arange(16, dtype=torch.float32).reshape(1, 4, 4)
    patch = ((1, 2, 1, 3), torch.tensor([[[100.0, 200.0]]]))
    out = gather(plane, (-1, 2, 0, 3), 0.0, patch)
    want = torch.tensor([[[0.0, 0.0, 0.0], [0.0, 1.0, 2.0], [4.0, 100.0, 200.0]]])
    assert torch.equal(out, want)
    assert fit((0, 1, 3, 4), 2, 3, (4, 4)) == (0, 2, 1, 4)   # grown, shifted inside the plane


@pytest.mark.parametrize("model,mode,n", [("digits-alexnet", "iov", 300), ("digits-resnet", "iov", 300),
                                           ("digits-resnet", "rf", 200), ("digits-alexnet", "ioa", 200)])
def test_cone_gives_the_rows_of_the_whole_tensor_path(tmp_path, model: str, mode: str, n: int) -> None:
    from kernelfi.campaign import CampaignConfig, ModelSpec
    from kernelfi.campaign.prepared import prepare
    rows = []
    for cone in (True, False):
        config = CampaignConfig(ModelSpec(model), mode, "single", n=n, seed=11, inputs=6, cone=cone)
        rows.append(campaign_rows(config, tmp_path / f"{cone}.db"))
    assert rows[0] == rows[1]
    # and the cone did the work: every conv/pool/shortcut unit passed its check, windows ran
    prep = prepare(CampaignConfig(ModelSpec(model), mode, "single", n=n, seed=11, inputs=6))
    assert len(prep.runner.cone.units) >= 8
    from kernelfi.campaign.batches import batches
    layer_of = {l.index: l.layer for l in prep.session.program.trace.launches}
    with torch.no_grad():
        for b in batches([prep.planner.draw(i) for i in range(n)], layer_of, 64):
            prep.runner.run(b)
    st = prep.runner.cone.stats
    assert st["windows"] > 20 and st["window_elems"] < 0.5 * st["map_elems"]


def test_composites_never_share_an_element() -> None:
    from kernelfi.execution.struck import composites
    claims = [(0, frozenset({5})), (1, frozenset({7})), (2, frozenset({5, 9})), (3, frozenset({9})),
              (4, frozenset({1}))]
    # worked by hand: 2 collides with 0 on element 5 and opens a second composite; 3 and 4 fit the first
    assert composites(claims) == [[0, 1, 3, 4], [2]]


def test_sparse_struck_layer_takes_the_pointwise_faults() -> None:
    from kernelfi.campaign import CampaignConfig, ModelSpec
    from kernelfi.campaign.batches import batches
    from kernelfi.campaign.prepared import prepare
    from kernelfi.execution.struck import pointwise_after
    prep = prepare(CampaignConfig(ModelSpec("digits-alexnet"), "iov", "single", n=120, seed=5, inputs=4))
    trace = prep.session.program.trace
    layout = prep.runner.layout
    kinds = {l.kernel: pointwise_after(trace, l.index, layout.layer_span[l.layer][1]) for l in trace.launches
             if l.layer == trace.launches[0].layer}
    assert kinds["add_bias"] and kinds["gemm"] and not kinds["im2col"] and not kinds["fill"]
    seen: list[int] = []
    real = prep.runner.struck.run

    def spy(state, refs, layer):
        seen.extend(state.faults[j].id for j in refs)
        return real(state, refs, layer)

    prep.runner.struck.run = spy  # type: ignore[method-assign]
    planned = [prep.planner.draw(i) for i in range(120)]
    layer_of = {l.index: l.layer for l in trace.launches}
    for b in batches(planned, layer_of, 32):
        prep.runner.run(b)
    eligible = sum(1 for pf in planned if pointwise_after(trace, pf.fault.site.launch,
                                                          layout.layer_span[layer_of[pf.fault.site.launch]][1])
                   and layout.layer_pos[layer_of[pf.fault.site.launch]] + 1 < len(trace.layers))
    assert eligible > 40 and len(seen) == eligible


@pytest.fixture
def torch_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """``diff_rows`` without the native library (tests/test_native.py checks that one)."""
    from kernelfi.execution import native
    monkeypatch.setattr(native, "_tried", True)
    monkeypatch.setattr(native, "_lib", None)


def test_diff_rows_by_hand(torch_path: None) -> None:
    """Errors are float32 arithmetic; a golden 0 is divided by 1e-30; NaN == NaN; a NaN
    error is infinite."""
    from kernelfi.execution.cone import diff_rows

    g = torch.tensor([[1.0, 2.5, 0.0, -4.0]])
    a = torch.tensor([[1.0, 2.5, 0.0, -4.0],        # clean
                      [1.0, 2.0, 0.0, -4.0],        # 0.5 off 2.5: rel 0.2
                      [1.0, 2.5, 3.0, -6.0],        # 3 off 0 (rel 3e30) and 2 off -4
                      [float("nan"), 2.5, 0.0, -4.0]])
    want_rel = float(torch.tensor(3.0) / torch.tensor(1e-30))
    want = [(0, 0.0, 0.0), (1, 0.5, float(torch.tensor(0.5) / torch.tensor(2.5))), (2, 3.0, want_rel),
            (1, math.inf, math.inf)]
    assert diff_rows(a, g) == want
    assert diff_rows(a, g, finite=True) == want  # whole-row path, same figures
    gn = torch.tensor([[float("nan"), 2.5, 0.0, -4.0]])
    assert diff_rows(a[3:], gn) == [(0, 0.0, 0.0)]


def test_diff_rows_whole_row_path_equals_the_gathering_one(torch_path: None) -> None:
    """``finite=True`` works on whole rows, the other path gathers the differing elements:
    the same counts and the same largest errors, bit for bit, on random rows."""
    from kernelfi.execution.cone import diff_rows

    gen = torch.Generator().manual_seed(3)
    for t in range(60):
        rows, n = 1 + t % 5, 1 + 7 * t
        g = torch.randn(1, n, generator=gen)
        g[:, ::3] = 0.0
        a = g.expand(rows, n).clone()
        hit = torch.rand(rows, n, generator=gen) < (t % 7) / 6
        a[hit] += torch.randn(int(hit.sum()), generator=gen) * 10.0 ** (t % 9 - 6)
        if t % 4 == 0:
            a[0, -1] = (math.inf, math.nan, 3e38, -math.inf)[t // 4 % 4]
        assert diff_rows(a, g, finite=True) == diff_rows(a, g, finite=False)


def test_struck_layer_in_chunks_gives_the_same_rows(tmp_path, monkeypatch) -> None:
    """RF faults in the gemm run the struck layer on whole lanes; bounding how many run at once
    (``Runner.whole_chunk``, here one lane at a time) changes nothing in the results."""
    import kernelfi.execution.runner as runner_mod
    from kernelfi.campaign import CampaignConfig, ModelSpec

    rows = []
    for budget in (runner_mod.WHOLE_BUDGET, 1):
        monkeypatch.setattr(runner_mod, "WHOLE_BUDGET", budget)
        config = CampaignConfig(ModelSpec("digits-resnet"), "rf", "single", n=80, seed=5, inputs=4)
        rows.append(campaign_rows(config, tmp_path / f"{budget}.db"))
    assert rows[0] == rows[1]


def test_lanes_of_several_layers_share_a_batch() -> None:
    """A batch spanning several layers (lanes join the walk at their own position) gives each
    fault the result it gets in a batch of its layer alone."""
    from kernelfi.campaign import CampaignConfig, ModelSpec
    from kernelfi.campaign.batches import batches
    from kernelfi.campaign.prepared import prepare

    prep = prepare(CampaignConfig(ModelSpec("digits-resnet"), "iov", "single", n=150, seed=13, inputs=5))
    layer_of = {l.index: l.layer for l in prep.session.program.trace.launches}
    planned = [prep.planner.draw(i) for i in range(150)]
    merged = list(batches(planned, layer_of, 50))
    assert any(len({layer_of[pf.fault.site.launch] for pf in b}) > 3 for b in merged)
    with torch.no_grad():
        got = {e.planned.id: e.result for b in merged for e in prep.runner.run(b)}
        alone = {}
        for b in merged:
            by_layer: dict[int, list] = {}
            for pf in b:
                by_layer.setdefault(layer_of[pf.fault.site.launch], []).append(pf)
            for part in by_layer.values():
                alone.update({e.planned.id: e.result for e in prep.runner.run(part)})
    assert {k: repr(v) for k, v in got.items()} == {k: repr(v) for k, v in alone.items()}
    assert sum(r.outcome != "masked" for r in got.values()) > 50


def test_similar_groups_lanes_of_like_boxes() -> None:
    """Lanes whose boxes would share one window size with little waste go together."""
    from kernelfi.execution.cone import SparseLane, similar

    boxes = [(0, 2, 0, 2), (0, 10, 0, 10), (5, 14, 0, 10), (3, 5, 3, 5), (0, 1, 0, 2), (7, 8, 7, 8)]
    step = [(SparseLane(i, 0), b) for i, b in enumerate(boxes)]
    groups = [[ln.fault for ln, _ in g] for g in similar(step)]
    # largest first: 10x10 and 9x10 share a 10x10 window (200 <= 1.25 * 190); a 2x2 would make
    # it 300 > 1.25 * 194, so it opens a group; the other 2x2 (8 <= 10) and the 1x2 (12 <= 12.5)
    # join it; the 1x1 would make it 16 > 1.25 * 11
    assert groups == [[1, 2], [0, 3, 4], [5]]
    # where a lone lane costs two: the lone 10x10 and 4x4 share a 10x10 window (100 <= 100 + 16:
    # one call of two 10x10 windows instead of two of two), the 3x5 and 1x1 a 3x5 (15 <= 16);
    # a lone 9x1 and a lone 1x9 (a 9x9 window: 81 > 18) stay apart
    boxes = [(0, 4, 0, 4), (0, 10, 0, 10), (5, 8, 0, 5), (7, 8, 7, 8)]
    step = [(SparseLane(i, 0), b) for i, b in enumerate(boxes)]
    assert [[ln.fault for ln, _ in g] for g in similar(step)] == [[1], [0], [2], [3]]
    assert [[ln.fault for ln, _ in g] for g in similar(step, lone_doubles=True)] == [[1, 0], [2, 3]]
    step = [(SparseLane(0, 0), (0, 9, 0, 1)), (SparseLane(1, 0), (0, 1, 0, 9))]
    assert [[ln.fault for ln, _ in g] for g in similar(step, lone_doubles=True)] == [[1], [0]]


def test_column_steps_give_the_rows_of_the_whole_tensor_path() -> None:
    """A bottleneck ResNet's stride-1 1x1 convolutions run all lanes' windows side by side as
    the columns of one GEMM (``Cone._step_cols``), maps of 144 pixels (calls of at most the
    map's columns) and of 36 or fewer (calls of ``CONCAT_COLS``); every row equals the
    whole-tensor path's, and the one of the grouped windows."""
    from kernelfi.execution.golden import Golden
    from kernelfi.campaign.planner import PlannedFault
    from kernelfi.execution.runner import Runner
    from kernelfi.lowering import lower
    from kernelfi.models.architectures import Bottleneck, ResNet
    from kernelfi.types import BitModel, Fault, Mode, Site

    torch.manual_seed(0)
    model = ResNet(Bottleneck, [2, 1, 1, 1], num_classes=10, width_per_group=16).eval()
    program = lower(model, (3, 48, 48), "bottleneck")
    golden = Golden.compute(program, torch.randn(3, 3, 48, 48))
    adds = [l for l in program.trace.launches if l.kernel == "add_bias"]
    gen = torch.Generator().manual_seed(3)
    planned = []
    for i in range(160):
        l = adds[i % len(adds)]
        slot = next(k for k, s in enumerate(l.template.slots) if s.tag == "fadd:out")
        site = Site(launch=l.index, group="FP32", thread=int(torch.randint(0, l.template.threads, (1,), generator=gen)),
                    slot=slot, iteration=0)
        bit = int(torch.randint(0, 32, (1,), generator=gen))
        planned.append(PlannedFault(i, Fault(Mode.IOV.value, site, BitModel.SINGLE.value, (bit,), None, False, i % 3),
                                    1.0))
    rows = {}
    for name, cone, cols in (("whole", False, False), ("groups", True, False), ("columns", True, True)):
        runner = Runner(program, golden, cone=cone)
        if cone:
            assert len(runner.cone.cols) >= 6  # every stride-1 1x1 convolution passed its check
            if not cols:
                runner.cone.cols = set()
        with torch.no_grad():
            rows[name] = {e.planned.id: repr(e.result) for s in range(0, 160, 40) for e in runner.run(planned[s:s + 40])}
        if cols:
            assert runner.cone.stats["column_steps"] > 10
    assert rows["columns"] == rows["groups"] == rows["whole"]
    assert sum("sdc_" in r for r in rows["whole"].values()) > 60


def test_struck_layer_from_the_golden_gemm_products() -> None:
    """The golden run keeps each GEMM's product (``Golden.pre``); a struck layer starts from it
    instead of recomputing the convolution, with the rows of the recomputing path. A product
    that differs from what the kernels leave (here by one ulp in one element) is refused."""
    from kernelfi.campaign import CampaignConfig, ModelSpec
    from kernelfi.campaign.batches import batches
    from kernelfi.campaign.prepared import prepare
    from kernelfi.execution.runner import Runner

    prep = prepare(CampaignConfig(ModelSpec("digits-resnet"), "iov", "single", n=150, seed=17, inputs=4))
    runner, golden = prep.runner, prep.runner.golden
    n_gemm = sum(l.kernel == "gemm" for l in runner.trace.launches)
    assert len(golden.pre) == n_gemm and len(runner.starts.gemm_cache) >= n_gemm - 1
    layer_of = {l.index: l.layer for l in prep.session.program.trace.launches}
    planned = [prep.planner.draw(i) for i in range(150)]
    rows = []
    for cache in (dict(runner.starts.gemm_cache), {}):
        runner.starts.gemm_cache = cache
        runner.starts.clear()
        with torch.no_grad():
            rows.append({e.planned.id: repr(e.result) for b in batches(planned, layer_of, 40) for e in runner.run(b)})
    assert rows[0] == rows[1]
    assert sum("sdc_" in r for r in rows[0].values()) > 30
    g = next(iter(golden.pre))
    golden.pre[g] = golden.pre[g].clone()
    golden.pre[g][0, 5] = torch.nextafter(golden.pre[g][0, 5], torch.tensor(math.inf))
    assert g not in Runner(prep.session.program, golden).starts.gemm_cache


def test_golden_plane_finiteness_by_hand() -> None:
    """A plane holding NaN, inf or -inf anywhere is not finite (its windows need NaN-aware
    comparisons); the answer is kept per plane and input."""
    from kernelfi.execution.cone import Cone

    cone = Cone.__new__(Cone)
    for v in (1.0, math.nan, math.inf, -math.inf):
        t = torch.randn(2, 50)
        t[1, 7] = v
        cone.gold, cone._finite = {"a": t}, {}
        assert cone.finite("a", 0)
        assert cone.finite("a", 1) == (v == 1.0)
        assert ("a", 1) in cone._finite


def test_owned_differences_of_composites_by_hand() -> None:
    """A composite's differing elements are read at its lanes' indices once one pass counts no
    other difference; a difference at an index no lane owns (or a golden NaN) leaves it to the
    whole-row comparison (None)."""
    from kernelfi.execution import native
    from kernelfi.execution.struck import _owned_diffs

    if not native.available():
        pytest.skip("no C compiler: the whole-row comparison runs instead")
    gold = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
    f = torch.tensor([[5.0, 9.0, 7.0, 8.0], [1.0, 2.0, 3.0, -4.0]])  # composites of golden rows 1, 0
    owner = [{1: 10}, {3: 11, 0: 12}]
    assert _owned_diffs(f, gold, [1, 0], owner) == {(0, 10): [1], (1, 11): [3]}
    f[0, 2] = math.nan  # a difference nobody owns
    assert _owned_diffs(f, gold, [1, 0], owner) is None
    f[0, 2] = 7.0
    gold[1, 3] = math.nan  # golden NaN: NaN equals NaN only in the whole-row comparison
    assert _owned_diffs(f, gold, [1, 0], owner) is None


def test_ceil_maxpool_past_stride_2_runs_on_windows() -> None:
    # MaxPool2d(3, 3, ceil_mode=True) on 8x8: 3 outputs a side, the last window rows 6..8 (row 8
    # past the input, ceil_pad_h = 1); the cone reads the extents from out_h/out_w, pads the
    # halo with -inf like the whole-tensor path, and passes its golden check
    from torch import nn

    from kernelfi.lowering import lower
    from kernelfi.lowering.crop import crop_units, verify

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.MaxPool2d(3, 3, ceil_mode=True), nn.Flatten()).eval()
    prog = lower(net, (1, 8, 8))
    pool = next(l for l in prog.trace.launches if l.kernel == "forward_maxpool")
    assert (pool.params["ceil_pad_h"], pool.params["out_h"]) == (1, 3)
    cu = crop_units(prog)[pool.layer]
    assert cu.in_box((2, 3, 2, 3)) == (6, 9, 6, 9)  # the last window, one row/column past the input
    mem = prog.run(prog.memory(torch.randn(2, 1, 8, 8)), fast=True)
    assert verify(cu, mem, mem, [0, 1], torch.Generator().manual_seed(0))
    crop = torch.stack([gather(mem[cu.inputs[0]][r].reshape(cu.in_chw), cu.in_box((1, 3, 0, 3)), cu.pad_value)
                        for r in (0, 1)])
    want = mem[cu.output].reshape(2, *cu.out_chw)[:, :, 1:3, 0:3]
    assert torch.equal(cu.run(mem, [crop]), want)
