"""What to protect under a budget: the residual-risk model and the greedy choice.

Pure bookkeeping (no torch, no store), fed by ``kernelfi.campaign.harden_planner``.

Residual risk of a category (Malfunction or Light-Malfunction) in one population, as a share of
all injections into the *unhardened* model:

    Σ_l share_l · (0 if l is in a replicated unit else 1 - fixed_l(clamps))  +  Σ_added pop_a · proxy

``share_l`` is the launch's smoothed share; ``fixed_l`` the (weighted) fraction of the launch's
stored rows of that category that one of the chosen clamps fixes (replay-verified; shrunk by one
pseudo-row that stays unfixed), or of its kernel type's rows when the launch has none, or of
all rows; ``pop_a`` the population (as a
share of the unhardened one) of each voter/checker/clamp the choice adds, at the per-injection
``proxy`` rate of small element-wise kernels. Replicas are Masked and add no risk.
"""
from __future__ import annotations

from dataclasses import dataclass, field

CATS: tuple[str, ...] = ("mal", "light")


@dataclass(frozen=True)
class Row:
    """A stored Malfunction/Light injection: where, its weight, the clamps that fix it."""

    launch: str
    weight: float
    fixed: frozenset[str]


@dataclass
class RiskModel:
    """One population's per-launch risk (see the module docstring)."""

    share: dict[str, dict[str, float]]        # cat -> launch -> share
    kernel_of: dict[str, str]
    rows: dict[str, list[Row]]                # cat -> rows
    proxy: dict[str, float]                   # cat -> rate per injection of an added launch
    added_pop: dict[str, dict[str, float]] = field(default_factory=dict)  # technique -> added launch -> pop
    var: dict[str, dict[str, float]] = field(default_factory=dict)        # cat -> launch -> variance of share


@dataclass(frozen=True)
class Candidate:
    technique: str
    key: str                  # the unit's primary launch, or the clamped buffer
    launches: tuple[str, ...]
    cost: float               # measured seconds it adds
    added: tuple[str, ...]    # names of the launches it adds
    layer: str = ""
    bounds: tuple[float, float] | None = None


@dataclass
class State:
    replicated: set[str] = field(default_factory=set)
    clamped: set[str] = field(default_factory=set)
    added: list[tuple[str, str]] = field(default_factory=list)   # (technique, launch name)
    defused: set[str] = field(default_factory=set)               # layers that lost the fused fast path


def cost(c: Candidate, st: State, penalty: dict[str, float]) -> float:
    """Seconds ``c`` adds given the state: its own launches, plus, the first time a layer gets
    replicas or checkers, the layer's loss of the engine's fused fast path (clamps are layers
    of their own and cost no fusion)."""
    extra = 0.0 if c.technique == "range" or c.layer in st.defused else penalty.get(c.layer, 0.0)
    return c.cost + max(extra, 0.0)


def _fixed_fraction(rows: list[Row], clamps: set[str]) -> float | None:
    """Weighted share of ``rows`` a clamp fixes, with one pseudo-row it does not fix: k rows
    seen fixed out of k never promise more than k/(k+1)."""
    w = sum(r.weight for r in rows)
    if not rows or w <= 0:
        return None
    return sum(r.weight for r in rows if r.fixed & clamps) / (w + w / len(rows))


def residual(models: list[RiskModel], st: State) -> dict[str, float]:
    """Residual share per category, averaged over populations."""
    out = {c: 0.0 for c in CATS}
    for m in models:
        for cat in CATS:
            rows = m.rows.get(cat, [])
            overall = _fixed_fraction(rows, st.clamped) or 0.0
            by_kernel: dict[str, float | None] = {}
            # the rows of each launch and of each kernel, in their order (the sums add the same
            # terms in the same order as filtering ``rows`` per launch did, 300x slower on ResNet-50)
            of_launch: dict[str, list[Row]] = {}
            of_kernel: dict[str | None, list[Row]] = {}
            if st.clamped:
                for r in rows:
                    of_launch.setdefault(r.launch, []).append(r)
                    of_kernel.setdefault(m.kernel_of.get(r.launch), []).append(r)
            total = 0.0
            for launch, share in m.share[cat].items():
                if launch in st.replicated or share <= 0:
                    continue
                frac = 0.0
                if st.clamped:
                    frac = _fixed_fraction(of_launch.get(launch, []), st.clamped)  # type: ignore[assignment]
                    if frac is None:
                        k = m.kernel_of.get(launch, "")
                        if k not in by_kernel:
                            by_kernel[k] = _fixed_fraction(of_kernel.get(k, []), st.clamped)
                        frac = by_kernel[k] if by_kernel[k] is not None else overall
                total += share * (1.0 - frac)
            total += sum(m.added_pop.get(t, {}).get(n, 0.0) for t, n in st.added) * m.proxy.get(cat, 0.0)
            out[cat] += total / len(models)
    return out


def with_candidate(st: State, c: Candidate) -> State:
    """The state after also taking ``c``."""
    new = State(set(st.replicated), set(st.clamped), list(st.added), set(st.defused))
    if c.technique == "range":
        new.clamped.add(c.key)
    else:
        new.replicated.update(c.launches)
        new.defused.add(c.layer)
    new.added.extend((c.technique, n) for n in c.added)
    return new


def choose(cands: list[Candidate], models: list[RiskModel], budget_s: float, light_weight: float,
           penalty: dict[str, float] | None = None) -> tuple[list[tuple[Candidate, float, float, float]], State]:
    """Greedy: repeatedly take the candidate with the most (Malfunction + light_weight × Light)
    removed per second that still fits the budget; one technique per launch, one clamp per
    buffer; stop when nothing that fits removes anything. Returns (candidate, Malfunction
    removed, Light removed, seconds added) in the order chosen, and the final state."""
    pen = penalty or {}
    st = State()
    now = residual(models, st)
    spent = 0.0
    chosen: list[tuple[Candidate, float, float, float]] = []
    pool = list(cands)
    while pool:
        best = None
        best_key = (0.0, 0.0)
        for c in pool:
            secs = cost(c, st, pen)
            if spent + secs > budget_s + 1e-12:
                continue
            after = residual(models, with_candidate(st, c))
            dm, dl = now["mal"] - after["mal"], now["light"] - after["light"]
            value = dm + light_weight * dl
            if value <= 1e-15:
                continue
            key = (value / max(secs, 1e-9), value)
            if key > best_key:
                best, best_key = (c, dm, dl, after, secs), key
        if best is None:
            break
        c, dm, dl, after, secs = best
        chosen.append((c, dm, dl, secs))
        st, now, spent = with_candidate(st, c), after, spent + secs
        pool = [p for p in pool if p is not c and not (p.technique == "range" and p.key in st.clamped)
                and (p.technique == "range" or not set(p.launches) & st.replicated)]
    return chosen, st
