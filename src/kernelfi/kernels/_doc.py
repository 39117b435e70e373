"""Renders the tag and register tables of docs/kernels.md from the kernels themselves.

``python -m kernelfi.kernels._doc`` prints every kernel's tables; paste them into the docs when a
template changes (tests check that every tag the kernels declare appears in the docs). Counts
that depend on a size are shown as a formula in it, found by evaluating the template at sizes
1, 2 and 3 and fitting a quadratic.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from ._base import all_kernels, get_kernel
from .activation import ACTIVATIONS

Params = Callable[[int], Mapping[str, Any]]

#: Per kernel: the size symbol of its loops (None: fixed per-thread counts) and params for it.
_SIZES: dict[str, tuple[str | None, Params]] = {
    "fill": (None, lambda v: {"n": 1, "value": 0.0}),
    "copy": (None, lambda v: {"n": 1, "out_offset": 0}),
    "add_bias": (None, lambda v: {"channels": 1, "spatial": 1}),
    "scale_bias": (None, lambda v: {"channels": 1, "spatial": 1}),
    "normalize": (None, lambda v: {"channels": 1, "spatial": 1, "eps": 1e-5}),
    "shortcut": (None, lambda v: {"w1": 1, "h1": 1, "c1": 1, "w2": 1, "h2": 1, "c2": 1}),
    "im2col": ("k", lambda v: {"channels": 1, "height": 9, "width": 9, "ksize": v, "stride": 1, "pad": 0,
                               "dilation": 1, "out_h": 10 - v, "out_w": 10 - v, "channel_offset": 0,
                               "group_channels": 1}),
    "gemm": ("B", lambda v: {"M": 1, "N": 1, "K": 8 * v}),
    "forward_maxpool": ("s", lambda v: {"channels": 1, "height": 9, "width": 9, "size": v, "stride": 1,
                                        "pad": 0, "out_h": 10 - v, "out_w": 10 - v}),
    "forward_avgpool": ("S", lambda v: {"channels": 1, "height": 1, "width": v}),
    "softmax": ("n", lambda v: {"n": v, "temperature": 1.0}),
    "scale_channels": (None, lambda v: {"channels": 1, "spatial": 1}),
    "forward_local_avgpool": ("s", lambda v: {"channels": 1, "height": 9, "width": 9, "size": v, "stride": 1,
                                              "pad": 0, "out_h": 10 - v, "out_w": 10 - v}),
    "adaptive_avgpool": (None, lambda v: {"channels": 1, "height": 3, "width": 3, "out_h": 2, "out_w": 2}),
    "max_pool_nchw": ("s", lambda v: {"channels": 1, "height": 9, "width": 9, "size": v, "stride": 1, "pad": 0,
                                      "dilation": 2, "out_h": 11 - 2 * v, "out_w": 11 - 2 * v}),
    "adaptive_maxpool": (None, lambda v: {"channels": 1, "height": 3, "width": 3, "out_h": 2, "out_w": 2}),
    "upsample_bilinear": ("C", lambda v: {"channels": v, "height": 2, "width": 2, "out_h": 4, "out_w": 4,
                                            "align_corners": False, "rheight": 0.5, "rwidth": 0.5}),
    "upsample": (None, lambda v: {"channels": 1, "height": 1, "width": 1, "stride": 2, "scale": 1.0}),
    "col2im": ("k", lambda v: {"channels": 1, "height": 9, "width": 9, "ksize": v, "stride": 1, "pad": 0,
                               "height_col": 10 - v, "width_col": 10 - v}),
    "group_norm_moments": ("t", lambda v: {"rows": 1, "row": 32 * v, "eps": 1e-5}),
    "group_norm_apply": (None, lambda v: {"channels": 2, "groups": 1, "spatial": 1, "affine": True}),
    "prelu": (None, lambda v: {"out": (1, 1, 1), "w": (1, 1, 1)}),
    "binary_op": (None, lambda v: {"op": "add", "out": (1, 1, 1), "a": (1, 1, 1), "b": (1, 1, 1)}),
    "scalar_op": (None, lambda v: {"n": 1, "op": "mul", "scalar": 2.0}),
    "clamp": (None, lambda v: {"n": 1, "min": -1.0, "max": 1.0}),
    "constant_pad": (None, lambda v: {"channels": 1, "height": 1, "width": 1, "top": 1, "left": 1,
                                      "out_h": 3, "out_w": 3, "value": 0.0}),
    "channel_shuffle": (None, lambda v: {"channels": 4, "groups": 2, "spatial": 1}),
    "reflection_pad2d": (None, lambda v: {"channels": 1, "height": 2, "width": 2, "top": 1, "left": 1,
                                          "out_h": 4, "out_w": 4}),
    "replication_pad2d": (None, lambda v: {"channels": 1, "height": 2, "width": 2, "top": 1, "left": 1,
                                           "out_h": 4, "out_w": 4}),
    "pixel_shuffle": (None, lambda v: {"channels": 4, "height": 1, "width": 1, "factor": 2}),
}
TAG_TABLE_HEAD = ("| tag | group | opcode | per thread | effect | what it computes / what a corruption reaches |\n"
         "|---|---|---|---|---|---|")


def _formula(a: int, b: int, c: int, var: str) -> str:
    parts = []
    if a:
        parts.append(f"{'' if a == 1 else a}{var}²")
    if b:
        if var == "T" and b % 16 == 0:          # 16 per K tile = once per k
            parts.append(f"{'' if b == 16 else b // 16}K")
        else:
            parts.append(f"{'' if b == 1 else b}{var}")
    if c or not parts:
        parts.append(str(c))
    return " + ".join(parts)


def tag_table(name: str) -> str:
    """The markdown tag table of one kernel (activate_array: every activation, marked)."""
    k = get_kernel(name)
    vocab = k.vocabulary()
    rows: dict[str, list[str]] = {}
    if name == "activate_array":
        for act in ACTIVATIONS:
            for s in k.template({"n": 1, "activation": act}).slots:
                rows.setdefault(s.tag, [s.group, s.opcode, str(s.count)]).append(act)
        lines = [TAG_TABLE_HEAD]
        for tag, (group, op, cnt, *acts) in rows.items():
            only = "" if len(acts) == len(ACTIVATIONS) else f" ({', '.join(acts)})"
            lines.append(f"| `{tag}` | {group} | {op} | {cnt}{only} | {vocab[tag].effect} | {vocab[tag].meaning} |")
        return "\n".join(lines)
    # a kernel with no sweep here (the selective-hardening kernels, docs/hardening.md): its
    # first example launch, counts as they are there
    var, params = _SIZES.get(name, (None, lambda v: k.example_params[0]))  # type: ignore[attr-defined]
    t1, t2, t3 = (k.template(params(v)) for v in (1, 2, 3))
    c2 = {s.tag: s.count for s in t2.slots}
    c3 = {s.tag: s.count for s in t3.slots}
    lines = [TAG_TABLE_HEAD]
    for s in t1.slots:
        y1, y2, y3 = s.count, c2[s.tag], c3[s.tag]
        a = (y3 - 2 * y2 + y1) // 2
        b = y2 - y1 - 3 * a
        c = y1 - a - b
        cnt = str(y1) if var is None else _formula(a, b, c, var)
        lines.append(f"| `{s.tag}` | {s.group} | {s.opcode} | {cnt} | {vocab[s.tag].effect} | {vocab[s.tag].meaning} |")
    return "\n".join(lines)


def register_table(name: str, params: Mapping[str, Any]) -> str:
    """The register map of one kernel for ``params``, as a markdown table."""
    rm = get_kernel(name).registers(params)
    lines = [f"allocated: {rm.allocated} (live roles below; the rest hold nothing live)", "",
             "| register | role | holds the result of | live (fraction of the thread's instructions) |",
             "|---|---|---|---|"]
    for r in rm.registers:
        lines.append(f"| {r.name} | {r.role.value} | `{r.tag}` | {r.live[0]:.2f} – {r.live[1]:.2f} |")
    return "\n".join(lines)


def main() -> None:
    for name in all_kernels():
        print(f"### {name}\n\n{tag_table(name)}\n")


if __name__ == "__main__":
    main()
