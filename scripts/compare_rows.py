"""The rows of a fixed set of campaigns, to show that a change to the engine leaves them unchanged.

    PYTHONPATH=<tree>/src python scripts/compare_rows.py run DB [--quick]   # run the campaigns into DB
    python scripts/compare_rows.py compare A B                             # every stored row of A and B

``run`` covers each mode (rf, iov, ioa) on digits-alexnet, digits-resnet, AlexNet and ResNet-50
(random weights, random inputs), the other bit models, warp faults, stratified selection, the
SASSIFI scope, the engine without the cone and without the fused fast path, and two campaigns on
a hardened digits-alexnet (TMR, DMR, ABFT and range restriction). ``--quick`` leaves out
AlexNet and ResNet-50. ``compare`` reads both databases with sqlite alone (no kernelfi import)
and compares every column of every campaign, launch, layer, injection and propagation row, but
the times (``campaigns.created``, ``injections.seconds``) and the path of the plan file;
floats bit for bit. Exit status 1
when a row differs or is missing.
"""
from __future__ import annotations

import json
import sqlite3
import struct
import sys
import time
from pathlib import Path

#: (model, mode, n, seed, other CampaignConfig fields)
CAMPAIGNS: list[tuple[str, str, int, int, dict]] = (
    [("digits-alexnet", m, 1500, 1, {}) for m in ("rf", "iov", "ioa")]
    + [("digits-alexnet", "iov", 200, 2, {"bit_model": b}) for b in ("double", "random", "zero")]
    + [("digits-alexnet", "ioa", 200, 3, {"warp": True}),
       ("digits-alexnet", "rf", 200, 4, {"selection": "kernel"}),
       ("digits-alexnet", "iov", 200, 5, {"scope": "sassifi", "selection": "layer"}),
       ("digits-alexnet", "iov", 300, 6, {"cone": False}),
       ("digits-alexnet", "ioa", 300, 7, {"fast": False})]
    + [("digits-resnet", m, 1000, 1, {}) for m in ("rf", "iov", "ioa")]
    + [("digits-resnet", "iov", 200, 2, {"bit_model": "random", "warp": True})]
    + [("hardened", m, 300, 1, {}) for m in ("iov", "ioa")]
)
LARGE: list[tuple[str, str, int, int, dict]] = (
    [("alexnet", m, 100, 1, {}) for m in ("rf", "iov", "ioa")]
    + [("resnet50", "iov", 120, 1, {}), ("resnet50", "ioa", 60, 1, {}), ("resnet50", "rf", 60, 1, {})]
)
#: columns that hold times, not results
SKIP = {("campaigns", "created"), ("injections", "seconds")}
TABLES = {"campaigns": "key", "launches": "campaign, idx", "layers": "campaign, idx",
          "injections": "campaign, id", "propagation": "campaign, injection, layer"}


def hardening_plan(path: Path) -> str:
    """A plan for digits-alexnet that uses every technique: TMR on a whole convolutional layer,
    DMR on every max-pool, ABFT on one GEMM, range restriction after a convolutional layer."""
    from kernelfi.campaign import ModelSpec, open_session

    trace = open_session(ModelSpec("digits-alexnet")).program.trace
    out = [l for l in trace.launches if trace.layers[l.layer].name == "features.8"][-1].writes[0]
    plan = {"version": 1, "model": "digits-alexnet", "protect": [
        {"target": "layer", "name": "features.3", "technique": "tmr"},
        {"target": "kernel", "name": "forward_maxpool", "technique": "dmr"},
        {"target": "launch", "name": "features.6.gemm", "technique": "abft"},
        {"target": "layer", "name": "features.8", "technique": "range", "bounds": {out: [0.0, 4.0]}},
    ]}
    path.write_text(json.dumps(plan, indent=1) + "\n")
    return str(path)


def run(db: str, quick: bool) -> None:
    from kernelfi.campaign import CampaignConfig, ModelSpec, run_campaign

    plan = hardening_plan(Path(db).with_suffix(".plan.json"))
    for model, mode, n, seed, options in CAMPAIGNS + ([] if quick else LARGE):
        extra = dict(options)
        spec = ModelSpec("digits-alexnet", hardening=plan) if model == "hardened" else ModelSpec(model)
        cfg = CampaignConfig(model=spec, mode=mode, bit_model=extra.pop("bit_model", "single"), n=n, seed=seed,
                             workers=1, **extra)
        t0 = time.perf_counter()
        run_campaign(cfg, db)
        print(f"{model} {mode} n {n} seed {seed} {options or ''}: {time.perf_counter() - t0:.1f} s", flush=True)


def _value(table: str, column: str, v: object) -> object:
    """A stored value as compared: the hardening plan's path is where ``run`` wrote it (its
    content is the ``hardening`` column)."""
    if (table, column) == ("campaigns", "extra") and isinstance(v, str):
        extra = json.loads(v)
        if (extra.get("model_spec") or {}).get("hardening"):
            extra["model_spec"]["hardening"] = "<plan>"
        return json.dumps(extra, sort_keys=True)
    return v


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return struct.pack("<d", a) == struct.pack("<d", b)
    return type(a) is type(b) and a == b


def rows(db: str, table: str) -> tuple[list[str], dict[tuple, tuple]]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        cur = con.execute(f"SELECT * FROM {table} ORDER BY {TABLES[table]}")
        cols = [d[0] for d in cur.description]
        keys = [cols.index(k.strip()) for k in TABLES[table].split(",")]
        return cols, {tuple(r[k] for k in keys): r for r in cur.fetchall()}
    finally:
        con.close()


def compare(a: str, b: str) -> int:
    bad = 0
    for table in TABLES:
        cols, ra = rows(a, table)
        cols_b, rb = rows(b, table)
        if cols != cols_b:
            print(f"{table}: columns differ: {cols} / {cols_b}")
            bad += 1
            continue
        check = [i for i, c in enumerate(cols) if (table, c) not in SKIP]
        ra = {k: tuple(_value(table, c, v) for c, v in zip(cols, r)) for k, r in ra.items()}
        rb = {k: tuple(_value(table, c, v) for c, v in zip(cols, r)) for k, r in rb.items()}
        differ = [k for k in ra if k in rb and not all(_same(ra[k][i], rb[k][i]) for i in check)]
        only_a, only_b = sorted(set(ra) - set(rb)), sorted(set(rb) - set(ra))
        bad += len(differ) + len(only_a) + len(only_b)
        print(f"{table}: {len(ra)} rows in A, {len(rb)} in B: {len(ra) - len(only_a) - len(differ)} equal, "
              f"{len(differ)} differ {differ[:5]}, {len(only_a)} only in A {only_a[:5]}, "
              f"{len(only_b)} only in B {only_b[:5]}")
        for k in differ[:3]:
            print("   ", k, [(cols[i], ra[k][i], rb[k][i]) for i in check if not _same(ra[k][i], rb[k][i])])
    print("identical" if bad == 0 else f"NOT identical: {bad} rows differ or are missing")
    return 1 if bad else 0


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "run":
        run(sys.argv[2], "--quick" in sys.argv[3:])
    elif len(sys.argv) == 4 and sys.argv[1] == "compare":
        raise SystemExit(compare(sys.argv[2], sys.argv[3]))
    else:
        raise SystemExit(__doc__)
