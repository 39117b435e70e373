"""The exported ``model.py``: Python source a reader can check (docs/export.md §1).

One file: a header saying how to load it, the runtime (``runtime.py`` from its ``BEGIN
RUNTIME`` line: the techniques), the original model's modules rebuilt from standard
``torch.nn`` constructors (``Net``, keeping every module path so the state dict keys are the
original's), and one straight-line ``forward`` per variant, rendered from the model's fx graph:
``Unhardened`` (no protection), ``Hardened`` (the plan), ``FullDMR`` and ``FullTMR``. A protected
op reads ``self.hardening.<call>(<op>, <args>)``; a clamp reassigns the layer output.

Modules keep their settings, in-place activations included: the replicating techniques give an
in-place op a copy of its input for each run (``runtime.run``), so no replica overwrites what
the next one reads. A residual add runs in place when its first operand is the fresh output of a
conv, BatchNorm or pool that nothing else reads (ResNet's ``out += identity``); other functional
ops run out of place. Each variable is deleted after its last use.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import torch.fx as fx
from torch import nn

from kernelfi._utils import KernelfiError
from kernelfi.lowering import FxLowered

from .mapping import OpHardening, graph_ops
from .spelling import call_spelling, module_ctor

RUNTIME = Path(__file__).with_name("runtime.py")
#: Class name of each variant in model.py, and what it runs.
VARIANT_CLASSES: dict[str, tuple[str, str]] = {
    "none": ("Unhardened", "the original model, no protection"),
    "plan": ("Hardened", "the hardening plan"),
    "full-dmr": ("FullDMR", "DMR of every op the trace's kernels map to"),
    "full-tmr": ("FullTMR", "TMR of every op the trace's kernels map to"),
}
_WRAPPERS = {"tmr": "TMR()", "dmr": "DMR()"}
#: Modules whose output is a new tensor (never a view of their input).
_FRESH = (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.MaxPool2d, nn.AvgPool2d)


def runtime_source() -> str:
    """The runtime part of model.py: runtime.py from its BEGIN RUNTIME line on."""
    text = RUNTIME.read_text()
    body = text[text.index("# BEGIN RUNTIME"):].split("\n", 1)[1]
    return "# ---- the techniques: kernelfi's harden/export/runtime.py, copied ----\n" + body


def _module_names() -> set[str]:
    """Global names of model.py, which forward's local variables must not shadow."""
    names = {"self", "annotations", "load", "Net", "VARIANTS", "WEIGHTS", "WEIGHTS_SHA256", "MODEL", "INPUT_SHAPE"}
    names |= {c for c, _ in VARIANT_CLASSES.values()}
    for stmt in ast.parse(runtime_source()).body:
        if isinstance(stmt, (ast.FunctionDef, ast.ClassDef)):
            names.add(stmt.name)
        elif isinstance(stmt, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in stmt.names}
        elif isinstance(stmt, ast.Assign):
            names |= {t.id for t in stmt.targets if isinstance(t, ast.Name)}
    return names


_NAMES = _module_names()


# ---------------------------------------------------------------------------------- modules
def _is_sequence(names: list[str]) -> bool:
    return names == [str(i) for i in range(len(names))]


def _tree(paths: list[str]) -> dict[str, Any]:
    root: dict[str, Any] = {}
    for path in paths:
        node = root
        for part in path.split("."):
            node = node.setdefault(part, {})
    return root


def _render_tree(tree: dict[str, Any], prefix: str, modules: dict[str, nn.Module], indent: str) -> str:
    """One constructor expression for the subtree: a leaf module, a Sequential (children named
    0..n-1) or a ``container`` (keyword arguments, or a dict where a name is no identifier)."""
    if not tree:
        return module_ctor(modules[prefix], prefix)
    names = list(tree)
    inner = indent + "    "
    seq, plain = _is_sequence(names), all(n.isidentifier() for n in names)
    parts = []
    for name in names:
        path = f"{prefix}.{name}" if prefix else name
        expr = _render_tree(tree[name], path, modules, inner)
        parts.append(f"{inner}{expr},  # {path}" if seq else f"{inner}{name}={expr}," if plain
                     else f"{inner}{name!r}: {expr},")
    if seq:
        return "nn.Sequential(\n" + "\n".join(parts) + "\n" + indent + ")"
    if plain:
        return "container(\n" + "\n".join(parts) + "\n" + indent + ")"
    return "container(**{\n" + "\n".join(parts) + "\n" + indent + "})"


def _access(path: str, tree: dict[str, Any]) -> str:
    out, node = "self", tree
    for part in path.split("."):
        if _is_sequence(list(node)):
            out += f"[{part}]"
        elif part.isidentifier():
            out += f".{part}"
        else:
            out = f"getattr({out}, {part!r})"
        node = node[part]
    return out


# ---------------------------------------------------------------------------------- forward
class _Forward:
    """Renders the graph as straight-line code for one variant."""

    def __init__(self, lowered: FxLowered, tree: dict[str, Any], hardening: OpHardening | None, box: str) -> None:
        self.gm = lowered.graph_module
        self.tree = tree
        self.h = hardening
        self.box = box
        self.ops = graph_ops(lowered)
        self.var: dict[str, str] = {}

    def name(self, node: fx.Node) -> str:
        v = node.name if node.name not in _NAMES else node.name + "_"
        self.var[node.name] = v
        return v

    def arg(self, a: Any) -> str:
        if isinstance(a, fx.Node):
            if a.name not in self.var:
                raise KernelfiError(f"export: fx node {a.name} feeds a tensor op but renders to nothing")
            return self.var[a.name]
        if isinstance(a, (tuple, list)):
            inner = ", ".join(self.arg(x) for x in a)
            return f"({inner},)" if len(a) == 1 else f"({inner})"
        if a is None or isinstance(a, (int, float, bool, str)):
            return repr(a)
        if isinstance(a, slice):  # x[:, a:b]
            return f"slice({a.start!r}, {a.stop!r}, {a.step!r})"
        raise KernelfiError(f"export: argument {a!r} has no rendering")

    def call(self, node: fx.Node) -> tuple[str, list[str]] | None:
        """(callable, args) of the node, keyword arguments rendered ``name=value`` after the
        positional ones; a callable ``.m`` is the method ``m`` of the first argument, ``[]`` an
        index into it, ``.`` an attribute of it. None: nothing to run (an alias)."""
        if node.op == "call_module":
            if node.kwargs:
                raise KernelfiError(f"export: module call {node.name} with keyword arguments")
            return _access(str(node.target), self.tree), [self.arg(a) for a in node.args]
        kind = call_spelling(node)
        if kind == "alias":
            return None
        if kind == "getattr":
            return ".", [self.arg(node.args[0]), str(node.args[1])]
        if kind == "getitem":
            return "[]", [self.arg(a) for a in node.args]
        if kind == "torch.add" and (len(node.args) != 2 or node.kwargs):
            raise KernelfiError(f"export: add {node.name} with more than two operands")
        args = [self.arg(a) for a in node.args]
        kwargs = dict(node.kwargs)
        if kind in ("torch.add", "torch.sub", "torch.mul") and len(node.args) == 2 \
                and not isinstance(node.args[0], fx.Node):
            # a number first (2 * x, 3 - x): the tensor first, as PyTorch itself computes it
            kind = "torch.rsub" if kind == "torch.sub" else kind
            args = args[::-1]
        if kind in ("torch.softmax", "F.softmax"):  # the implicit dim of a 2-D input, written out
            dim = kwargs.pop("dim", node.args[1] if len(node.args) > 1 else None)
            args = [args[0], repr(1 if dim is None else dim), *args[2:]]
        return kind, args + [f"{k}={self.arg(v)}" for k, v in kwargs.items()]

    def owned(self, a: Any, user: fx.Node) -> bool:
        """May ``user`` add into ``a`` in place (as ``out += identity`` does in a ResNet block)? Only
        when ``user`` is its one reader and ``a`` is the fresh output of a conv, linear, batch
        norm or pool (whatever the technique around it: each returns a tensor of its own)."""
        if not isinstance(a, fx.Node) or len(a.users) != 1 or a.op != "call_module":
            return False
        return isinstance(self.gm.get_submodule(str(a.target)), _FRESH)

    def lines(self) -> list[str]:
        """The body of forward. Each variable is deleted after its last use, as a module's own
        forward lets its intermediates go: kept alive, they would hold the whole network's
        activations at once (measured: +49% time on resnet50 at batch 8 on the CPU)."""
        blocks: list[tuple[list[str], set[str]]] = []   # per rendered node: its lines, the variables it reads
        ret = ""
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                self.name(node)
            elif node.op == "output":
                res = node.args[0]
                ret = self.arg(res[0] if isinstance(res, (tuple, list)) else res)
            else:
                code = self.node_lines(node)
                if code:
                    blocks.append((code, {self.var[n.name] for n in node.all_input_nodes if n.name in self.var}))
        last = {v: i for i, (_, used) in enumerate(blocks) for v in used}
        out: list[str] = []
        for i, (code, _) in enumerate(blocks):
            out.extend(code)
            done = sorted(v for v, at in last.items() if at == i and v != ret)
            if done:
                out.append(f"del {', '.join(done)}")
        return out + [f"return {ret}"]

    def node_lines(self, node: fx.Node) -> list[str]:
        got = self.call(node)
        if got is None:
            if call_spelling(node) == "alias":
                self.var[node.name] = self.arg(node.args[0])
            return []
        fn, args = got
        v = self.name(node)
        tech = self.h.replicate.get(node.name) if self.h is not None else None
        op = self.ops.get(node.name)
        where = f"  # {tech}: {op.module} ({op.kind})" if tech and op else ""
        if tech and fn == "[]":  # a channel slice (a layer: the copy of its range)
            fn, args = "operator.getitem", args
        if tech and len(fn) > 1 and fn[0] == ".":  # a channel shuffle's view back (a layer: the copy)
            fn = f"torch.Tensor{fn}"
        if tech and fn[0] in ".[":
            raise KernelfiError(f"export: {tech} of {node.name} ({fn}), which belongs to no layer")
        if fn[0] in ".[":
            line = f"{v} = {args[0]}" + (f".{args[1]}" if fn == "." else f"[{args[1]}]" if fn == "[]"
                                         else f"{fn}({', '.join(args[1:])})")
        elif tech:
            line = f"{v} = self.{self.box}.{node.name}({fn}, {', '.join(args)}){where}"
        elif fn == "torch.add":
            line = f"{v} = {args[0]}.add_({args[1]})" if self.owned(node.args[0], node) else \
                f"{v} = {args[0]} + {args[1]}"
        else:
            line = f"{v} = {fn}({', '.join(args)})"
        out = [line]
        if self.h is not None and node.name in self.h.clamps:
            lo, hi = self.h.clamps[node.name]
            out.append(f"{v} = self.{self.box}.{node.name}_range({v})  # range [{lo!r}, {hi!r}] of layer "
                       f"{op.layer if op else node.name}")
        return out

    def wrappers(self) -> list[str]:
        """__init__ lines creating the technique modules of this variant."""
        if self.h is None or not (self.h.replicate or self.h.clamps):
            return []
        lines = [f"self.{self.box} = nn.Module()  # the techniques; the ops stay at their original paths"]
        for node in self.gm.graph.nodes:
            tech = self.h.replicate.get(node.name)
            if tech == "abft":
                path = str(node.target)
                cls = "ABFTConv2d" if isinstance(self.gm.get_submodule(path), nn.Conv2d) else "ABFTLinear"
                lines.append(f"self.{self.box}.add_module({node.name!r}, {cls}({path!r}))")
            elif tech:
                lines.append(f"self.{self.box}.add_module({node.name!r}, {_WRAPPERS[tech]})")
            if node.name in self.h.clamps:
                lo, hi = self.h.clamps[node.name]
                lines.append(f"self.{self.box}.add_module({node.name + '_range'!r}, Clamp({lo!r}, {hi!r}))")
        return lines


def _box_name(tree: dict[str, Any]) -> str:
    name = "hardening"
    while name in tree:
        name += "_"
    return name


def generate(lowered: FxLowered, variants: dict[str, OpHardening | None], header: str, constants: dict[str, Any]) -> str:
    """The whole model.py text."""
    gm = lowered.graph_module
    modules = dict(gm.named_modules())
    paths = list(dict.fromkeys(str(n.target) for n in gm.graph.nodes if n.op == "call_module"))
    tree = _tree(paths)
    box = _box_name(tree)
    body = [f'"""{header}"""', "from __future__ import annotations", "", runtime_source().rstrip(), "", ""]
    body += [f"{k} = {v!r}" for k, v in constants.items()]
    body += ["", "", "class Net(HardenedModule):",
             '    """The original model\'s modules at their original paths (standard torch.nn)."""', "",
             "    def __init__(self) -> None:", "        super().__init__()"]
    for name, sub in tree.items():
        body.append(f"        self.{name} = " + _render_tree(sub, name, modules, "        "))
    for variant, hardening in variants.items():
        cls, doc = VARIANT_CLASSES[variant]
        fwd = _Forward(lowered, tree, hardening, box)
        code = fwd.lines()
        body += ["", "", f"class {cls}(Net):", f'    """{doc[0].upper() + doc[1:]}."""', ""]
        init = fwd.wrappers()
        if init:
            body += ["    def __init__(self) -> None:", "        super().__init__()"]
            body += [f"        {line}" for line in init] + [""]
        placeholder = next(n for n in gm.graph.nodes if n.op == "placeholder")
        arg = placeholder.name if placeholder.name not in _NAMES else placeholder.name + "_"
        body += [f"    def forward(self, {arg}: Tensor) -> Tensor:"] + [f"        {line}" for line in code]
    body += ["", "", "VARIANTS = {" + ", ".join(f"{v!r}: {VARIANT_CLASSES[v][0]}" for v in variants) + "}", "", "",
             'def load(directory: str | Path | None = None, variant: str = "plan", device: str | torch.device = "cpu") -> nn.Module:',
             '    """The exported model, weights loaded (safetensors, sha256 checked), in eval mode on ``device``.',
             "",
             f"    ``variant``: {', '.join(repr(v) for v in variants)} (see the classes above); ``directory``: where",
             '    weights.safetensors lies (default: next to this file)."""',
             "    if variant not in VARIANTS:",
             '        raise ValueError(f"variant {variant!r} is not one of {\', \'.join(VARIANTS)}")',
             "    folder = Path(directory) if directory is not None else Path(__file__).resolve().parent",
             "    return load_weights(VARIANTS[variant](), folder / WEIGHTS, WEIGHTS_SHA256, device)", ""]
    return "\n".join(body)

