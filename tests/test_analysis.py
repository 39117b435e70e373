"""The analysis library against independent SQL over hand-made rows, statsmodels' intervals,
a hand-worked stratified example, Leveugle's worked values and FIT arithmetic by hand."""
from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.proportion import proportion_confint

from kernelfi._utils import KernelfiError
from kernelfi.analysis import (
    bit_table, field_of, fit_estimate, margin_for, masking_table, outcome_table, populations,
    propagation_table, sample_size, verdict, vulnerability,
)
from kernelfi.store import CampaignMeta, InjectionRecord, LaunchRow, LayerRow, Store
from kernelfi.types import OUTCOMES, Propagation

LAYERS = [LayerRow(0, "convolutional", "conv1", 40), LayerRow(1, "maxpool", "pool1", 10),
          LayerRow(2, "connected", "fc", 4)]
LAUNCHES = [
    LaunchRow(0, "conv1.fill", "fill", 0, "convolutional", {"NODEST": 40}, 40),
    LaunchRow(1, "conv1.gemm", "gemm", 0, "convolutional", {"FP32": 900, "LD": 300}, 40),
    LaunchRow(2, "conv1.add_bias", "add_bias", 0, "convolutional", {"FP32": 40, "LD": 80}, 40),
    LaunchRow(3, "pool1.forward_maxpool", "forward_maxpool", 1, "maxpool", {"FP32": 30}, 10),
    LaunchRow(4, "fc.gemm", "gemm", 2, "connected", {"FP32": 40, "LD": 80}, 4),
    LaunchRow(5, "fc.add_bias", "add_bias", 2, "connected", {"FP32": 4, "LD": 8}, 4),
]
NUMEL = {l.index: l.numel for l in LAYERS}


def meta(**kw: object) -> CampaignMeta:
    base = dict(model="tiny", mode="iov", bit_model="single", seed=1, n_planned=200)
    base.update(kw)
    return CampaignMeta(**base)  # type: ignore[arg-type]


def random_rows(seed: int, n: int, mode: str = "iov") -> list[InjectionRecord]:
    """Hand-made rows: every outcome, kernels shared across layers, NaN/inf errors, early stop."""
    rnd = random.Random(seed)
    rows = []
    for i in range(n):
        l = LAUNCHES[rnd.randrange(len(LAUNCHES))]
        outcome = rnd.choices(OUTCOMES, weights=[50, 10, 15, 15, 10])[0]
        prop: list[Propagation] = []
        if outcome.startswith("sdc_"):
            for k in range(l.layer, 3):
                clean = outcome == "sdc_no_malfunction" and k > l.layer and rnd.random() < 0.6
                err = rnd.choice([0.5, 2.0, 1e3] if rnd.random() > 0.03 else [math.inf, math.nan])
                prop.append(Propagation(k, 0 if clean else rnd.randint(1, NUMEL[k]), NUMEL[k],
                                        0.0 if clean else err, 0.0 if clean else err / 3))
                if clean and rnd.random() < 0.5:
                    break  # early stop: the lane is golden again, nothing more recorded
        rows.append(InjectionRecord(
            id=i, input_id=rnd.randrange(4), launch=l.index, launch_name=l.name, kernel=l.kernel,
            layer=l.layer, layer_type=l.layer_type, mode=mode, grp="FP32", bit_model="single",
            bits=(rnd.randrange(32),), outcome=outcome, propagation=tuple(prop)))
    return rows


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    s = Store(tmp_path_factory.mktemp("a") / "results.db")
    a = s.get_or_create_campaign(meta(), LAUNCHES, LAYERS)
    b = s.get_or_create_campaign(meta(seed=2), LAUNCHES, LAYERS)
    rf = s.get_or_create_campaign(meta(mode="rf", derating=0.5), LAUNCHES, LAYERS)
    s.add_results(a, random_rows(1, 200))
    s.add_results(b, random_rows(2, 150))
    s.add_results(rf, random_rows(3, 120, mode="rf"))
    assert (a, b, rf) == (1, 2, 3)
    yield s
    s.close()


def sql(store: Store, query: str) -> pd.DataFrame:
    return pd.read_sql_query(query, store.connection)


@pytest.mark.parametrize("by,keys", [("kernel", ["kernel"]), ("layer", ["layer"]),
                                     ("launch", ["launch"]), (None, [])])
def test_outcome_table_counts_match_sql(store: Store, by: str | None, keys: list[str]) -> None:
    t = outcome_table(store, [1, 2], by=by)
    group = ", ".join(keys)
    sel = f"{group}, " if keys else ""
    counts = sql(store, f"""SELECT {sel} outcome, count(*) AS c FROM injections
                            WHERE campaign IN (1, 2) GROUP BY {sel} outcome""")
    sizes = sql(store, f"SELECT {sel} count(*) AS n FROM injections WHERE campaign IN (1, 2)"
                       + (f" GROUP BY {group}" if keys else ""))
    merged = t[t.outcome != "sdc"].merge(counts, on=[*keys, "outcome"], how="left").fillna({"c": 0})
    assert (merged["count"] == merged["c"]).all()
    assert len(t) == 6 * len(sizes)
    total = int(sizes["n"].sum())
    assert total == 350
    sized = t.merge(sizes, on=keys) if keys else t.assign(n_x=t["n"], n_y=int(sizes["n"][0]))
    assert (sized["n_x"] == sized["n_y"]).all()  # n = injections in the group
    assert np.allclose(t["share_of_all"], t["count"] / total)
    assert np.allclose(t["rate"], t["count"] / t["n"])
    five = t[t.outcome != "sdc"]
    assert math.isclose(five["share_of_all"].sum(), 1.0)  # sums to 100% over groups (Fig. 4-6)
    g = t.assign(_g=0).groupby([*keys, "_g"])
    sdc_parts = g.apply(lambda d: d.loc[d.outcome.str.startswith("sdc_"), "count"].sum())
    sdc_total = g.apply(lambda d: d.loc[d.outcome == "sdc", "count"].sum())
    assert (sdc_parts == sdc_total).all()
    if by == "layer":
        assert list(t.drop_duplicates("layer")["layer_name"]) == ["conv1", "pool1", "fc"]


def test_intervals_are_statsmodels(store: Store) -> None:
    t = outcome_table(store, 1, by="kernel")
    for r in t.itertuples():
        for label, method in (("wilson", "wilson"), ("cp", "beta")):
            lo, hi = proportion_confint(r.count, r.n, alpha=0.05, method=method)
            assert getattr(r, f"rate_{label}_low") == lo
            assert getattr(r, f"rate_{label}_high") == hi
            lo, hi = proportion_confint(r.count, 200, alpha=0.05, method=method)
            assert getattr(r, f"share_of_all_{label}_low") == lo
            assert getattr(r, f"share_of_all_{label}_high") == hi
        assert r.n_eff == r.n


def test_pooling_different_populations_is_refused(store: Store) -> None:
    with pytest.raises(KernelfiError, match="mode"):
        outcome_table(store, [1, 3])
    pops = populations(store)
    assert sorted(pops["campaigns"]) == [(1, 2), (3,)]
    assert list(pops.sort_values("mode")["n"]) == [350, 120]


def test_pvf_and_derated_avf(store: Store) -> None:
    pvf = vulnerability(store, [1, 2], by="kernel")
    assert set(pvf["metric"]) == {"PVF"} and pvf["rate_derated"].isna().all()
    avf = vulnerability(store, 3, by="layer")
    assert set(avf["metric"]) == {"AVF"} and (avf["derating"] == 0.5).all()
    for raw, derated in (("rate", "rate_derated"), ("rate_wilson_high", "rate_derated_wilson_high"),
                         ("share_of_all_cp_low", "share_of_all_derated_cp_low")):
        assert np.allclose(avf[derated], avf[raw] * 0.5)


def test_stratified_reweighting_hand_example(tmp_path: Path) -> None:
    """Kernels with population shares 0.9 / 0.1, sampled 10 / 10: weights 1.8 / 0.2.
    K1 has 1 SDC in 10, K2 5 in 10. Uniform-population SDC rate = 0.9·0.1 + 0.1·0.5 = 0.14
    (the unweighted 6/20 = 0.30 would be wrong); Kish n_eff = 20² / (10·1.8² + 10·0.2²)."""
    launches = [LaunchRow(0, "a.gemm", "gemm", 0, "convolutional", {"FP32": 90}, 1),
                LaunchRow(1, "a.add_bias", "add_bias", 0, "convolutional", {"FP32": 10}, 1)]
    rows = []
    for i in range(20):
        k = i // 10
        sdc = (i % 10) < (1 if k == 0 else 5)
        rows.append(InjectionRecord(
            id=i, input_id=0, launch=k, launch_name=launches[k].name, kernel=launches[k].kernel,
            layer=0, layer_type="convolutional", mode="iov", grp="FP32", bit_model="single",
            bits=(3,), outcome="sdc_malfunction" if sdc else "masked", weight=(1.8, 0.2)[k]))
    with Store(tmp_path / "s.db") as s:
        cid = s.get_or_create_campaign(meta(selection="kernel", n_planned=20), launches,
                                       [LayerRow(0, "convolutional", "a", 1)])
        s.add_results(cid, rows)
        overall = outcome_table(s, cid).set_index("outcome").loc["sdc"]
        assert overall["rate"] == pytest.approx(0.14)
        n_eff = 20**2 / (10 * 1.8**2 + 10 * 0.2**2)
        assert overall["n_eff"] == pytest.approx(n_eff)
        lo, hi = proportion_confint(0.14 * n_eff, n_eff, method="wilson")
        assert (overall["rate_wilson_low"], overall["rate_wilson_high"]) == pytest.approx((lo, hi))
        per = outcome_table(s, cid, by="kernel").set_index(["kernel", "outcome"])
        assert per.loc[("gemm", "sdc"), "rate"] == pytest.approx(0.1)  # within a stratum: plain
        assert per.loc[("gemm", "sdc"), "rate_cp_high"] == pytest.approx(
            proportion_confint(1, 10, method="beta")[1])
        assert per.loc[("gemm", "sdc"), "share_of_all"] == pytest.approx(0.09)
        assert per.loc[("add_bias", "sdc"), "share_of_all"] == pytest.approx(0.05)


def test_propagation_table_matches_sql(store: Store) -> None:
    t = propagation_table(store, 1).set_index(["injected_layer", "layer"])
    ref = sql(store, """
        WITH sdc AS (SELECT id, layer AS injected FROM injections
                     WHERE campaign = 1 AND outcome LIKE 'sdc%'),
             grid AS (SELECT s.id, s.injected, l.idx AS layer, l.numel FROM sdc s
                      JOIN layers l ON l.campaign = 1 AND l.idx >= s.injected)
        SELECT g.injected, g.layer, count(*) AS n,
               avg(coalesce(p.corrupted, 0) * 1.0 / g.numel) AS share,
               avg(coalesce(p.corrupted, 0) > 0) AS reached,
               avg(CASE WHEN p.max_rel IS NULL THEN 0.0 WHEN p.max_rel = 'nan' THEN 9e999
                        ELSE p.max_rel END) AS max_rel_mean
        FROM grid g LEFT JOIN propagation p
             ON p.campaign = 1 AND p.injection = g.id AND p.layer = g.layer
        GROUP BY g.injected, g.layer""")
    assert len(ref) == len(t)
    for r in ref.itertuples():
        row = t.loc[(r.injected, r.layer)]
        assert row["n"] == r.n
        assert row["share_corrupted_mean"] == pytest.approx(r.share)
        assert row["reached"] == pytest.approx(r.reached)
        assert row["max_rel_mean"] == pytest.approx(r.max_rel_mean)
    assert np.isinf(t["max_abs_max"]).any()  # NaN and inf errors count as unbounded
    assert np.isfinite(t["max_abs_mean"]).any()
    assert t.loc[(0, 0), "injected_layer_name"] == "conv1" and t.loc[(0, 2), "layer_name"] == "fc"


def test_masking_table_matches_sql(store: Store) -> None:
    t = masking_table(store, [1, 2])
    ref = sql(store, """
        SELECT i.layer AS injected, coalesce(
               (SELECT min(p.layer) FROM propagation p WHERE p.campaign = i.campaign AND
                p.injection = i.id AND p.corrupted = 0 AND p.layer >= i.layer), -1) AS masked_at,
               count(*) AS c
        FROM injections i WHERE i.campaign IN (1, 2) AND i.outcome = 'sdc_no_malfunction'
        GROUP BY 1, 2 ORDER BY 1, 2""")
    assert list(zip(t.injected_layer, t.masked_at, t["count"])) == \
        list(zip(ref.injected, ref.masked_at, ref.c))
    assert np.allclose(t.groupby("injected_layer")["share"].sum(), 1.0)
    assert (t["masked_at"] > 0).any()


def test_bit_table_matches_sql(store: Store) -> None:
    t = bit_table(store, [1, 2]).set_index(["bit", "outcome"])
    ref = sql(store, """SELECT CAST(bits AS INTEGER) AS bit, outcome, count(*) AS c,
                        (SELECT count(*) FROM injections j WHERE j.campaign IN (1, 2)
                         AND j.bits = i.bits) AS n
                        FROM injections i WHERE campaign IN (1, 2) GROUP BY bits, outcome""")
    for r in ref.itertuples():
        assert t.loc[(r.bit, r.outcome), "count"] == r.c
        assert t.loc[(r.bit, r.outcome), "rate"] == pytest.approx(r.c / r.n)
    fields = bit_table(store, [1, 2], per="field").set_index(["field", "outcome"])
    exp = sql(store, """SELECT count(*) FROM injections WHERE campaign IN (1, 2) AND
                        CAST(bits AS INTEGER) BETWEEN 23 AND 30 AND outcome = 'sdc_malfunction'""")
    assert fields.loc[("exponent", "sdc_malfunction"), "count"] == exp.iloc[0, 0]
    assert fields.groupby(level="outcome")["n"].sum()["masked"] == 350
    assert [field_of(b) for b in (0, 22, 23, 30, 31, 40)] == \
        ["mantissa", "mantissa", "exponent", "exponent", "sign", "other"]


def test_double_bit_flip_counts_for_both_bits_once_per_field(tmp_path: Path) -> None:
    l = LAUNCHES[1]
    rows = [InjectionRecord(id=i, input_id=0, launch=1, launch_name=l.name, kernel=l.kernel,
                            layer=0, layer_type=l.layer_type, mode="iov", grp="FP32",
                            bit_model="double", bits=b, outcome=o)
            for i, (b, o) in enumerate([((22, 23), "masked"), ((24, 25), "sdc_malfunction"), ((), "due")])]
    with Store(tmp_path / "d.db") as s:
        cid = s.get_or_create_campaign(meta(bit_model="double"), LAUNCHES, LAYERS)
        s.add_results(cid, rows)
        bits = bit_table(s, cid).set_index(["bit", "outcome"])
        assert bits.loc[(23, "masked"), "n"] == 1 and bits.loc[(25, "sdc"), "count"] == 1
        f = bit_table(s, cid, per="field").set_index(["field", "outcome"])
        assert f.loc[("exponent", "masked"), "n"] == 2  # ids 0 and 1, id 1 once
        assert f.loc[("exponent", "sdc_malfunction"), "rate"] == 0.5


def test_planner_worked_values() -> None:
    assert margin_for(1000) == pytest.approx(0.031, abs=5e-4)  # Leveugle: ±3.1%
    assert sample_size(0.01) == 9604
    assert sample_size(0.05) == 385
    assert sample_size(0.031) <= 1000 < sample_size(0.0309)
    n = sample_size(0.01, population=20_000)
    assert n == math.ceil(20_000 / (1 + 0.01**2 * 19_999 / (1.959963984540054**2 * 0.25)))
    assert margin_for(n, population=20_000) <= 0.01 < margin_for(n - 1, population=20_000)
    assert sample_size(0.01, population=10**12) == 9604
    v = verdict(500, 1000, 0.031)
    assert v.reached and v.more == 0 and v.margin == pytest.approx(0.0309, abs=5e-4)
    v = verdict(500, 1000, 0.01)
    assert not v.reached and abs(v.needed - 9604) < 10 and v.more == v.needed - 1000
    v = verdict(0, 100, 0.01)  # a zero rate still has a Wilson upper bound: 3.84/(n+3.84)
    assert not v.reached and 370 < v.needed < 385


def test_fit_arithmetic_by_hand() -> None:
    f = fit_estimate((0.02, 0.01, 0.04), exposed_bits=2_000_000, raw_fit_per_mbit=1000.0)
    # 1000 FIT/Mbit = 1e-3 FIT/bit; × 2e6 bits = 2000 FIT raw; × AVF
    assert (f.fit, f.low, f.high) == pytest.approx((40.0, 20.0, 80.0))
    assert f.verdict == "exceeds" and not f.within_budget
    g = fit_estimate(0.002, exposed_bits=4000, raw_fit_per_mbit=700.0)
    assert g.fit == pytest.approx(0.7e-3 * 4000 * 0.002) and g.verdict == "meets"
    h = fit_estimate((0.004, 0.001, 0.01), exposed_bits=1_000_000, raw_fit_per_mbit=1200.0)
    assert h.verdict == "inconclusive"  # 1.2 .. 12 FIT straddles the 10 FIT ASIL-D budget


def test_fit_accepts_interval_round_off_at_zero_count() -> None:
    # statsmodels' Wilson low bound for 0 of n can come back as ~1e-19 instead of 0
    from kernelfi.analysis import fit_estimate
    est = fit_estimate((0.0, 2.168404344971009e-19, 0.0038), exposed_bits=10**6, raw_fit_per_mbit=1000.0)
    assert est.fit == 0.0 and est.low == 0.0 and est.high > 0
