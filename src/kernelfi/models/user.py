"""Models that live in the user's own Python files: ``path/to/net.py:factory`` and the source of
a builder the user registered.

A model file is named ``PATH.py:FACTORY``: ``FACTORY`` is a top-level callable of the file
(a function or a class) that, called with no arguments, returns the ``nn.Module`` with its
weights. Every process that needs the model (a campaign's workers, a later ``replay`` or
``harden``) imports the file again by its absolute path and calls the factory; weights that
are not the factory's own travel as a state dict file (``.safetensors``, or ``torch.save`` of
tensors read with ``weights_only=True``): no process ever unpickles a model. Importing the file
runs the user's code, which the user named; a file whose content changed since it was recorded
(``sha256``) is refused in one line, so no campaign mixes two versions of a model.

A builder registered with ``register_model`` from a user file (even inside ``main()``) is
rebuilt in another process the same way: its file is imported by path and the builder looked up
by its qualified name (``source_of``), then registered there with the same metadata.
"""
from __future__ import annotations

import hashlib
import importlib.util
import inspect
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Mapping

import torch
from torch import nn

from kernelfi._utils import KernelfiError, one_line, sha256_file
from kernelfi.models.checkpoints import apply_state, load_state
from kernelfi.models.info import LoadedModel, ModelInfo
from kernelfi.models.random_init import RANDOM_INIT_SCHEME, init_random

__all__ = ["is_model_file", "parse_model_file", "import_file", "load_file_model", "source_of", "lookup",
           "state_digest", "user_code", "reproducible", "FACTORY_WEIGHTS"]

#: ``LoadedModel.weights_source`` of weights the factory (or builder) set itself
FACTORY_WEIGHTS = "factory"
_PACKAGE = Path(__file__).resolve().parent.parent  # kernelfi's own files are not user sources
#: Where installed libraries live (the standard library, site-packages): a class from there
#: (``nn.Sequential`` built inline, a torchvision architecture) is no user source to import by
#: path, and its constructor's arguments are not recorded anywhere.
_LIBRARIES = frozenset(Path(p).resolve() for k, p in sysconfig.get_paths().items()
                       if k in ("stdlib", "platstdlib", "purelib", "platlib"))


def is_model_file(name: str) -> bool:
    """Whether a model name is ``PATH.py:FACTORY``."""
    path, sep, factory = str(name).rpartition(":")
    return bool(sep) and path.lower().endswith(".py") and bool(factory)


def parse_model_file(name: str) -> tuple[Path, str]:
    """(absolute path, factory) of ``PATH.py:FACTORY``; one line where the file is missing."""
    path, _, factory = str(name).rpartition(":")
    p = Path(path).expanduser()
    if not p.is_file():
        raise KernelfiError(f"{path}: no such model file (a model file is PATH.py:FACTORY)")
    return p.resolve(), factory


_IMPORTED: dict[tuple[str, str], ModuleType] = {}


def import_file(path: str | Path, sha256: str | None = None) -> ModuleType:
    """Import the Python file ``path`` under a private module name (once per content), checking
    its content against ``sha256`` where given, with its directory on ``sys.path`` (as ``python
    FILE`` has it). Its ``if __name__ == "__main__"`` block does not run. Any exception it raises
    becomes one line naming the file."""
    p = Path(path).expanduser().resolve()
    if not p.is_file():
        raise KernelfiError(f"{p}: the model source file is missing")
    digest = sha256_file(p)
    if sha256 and digest != sha256:
        raise KernelfiError(f"{p}: the model source file changed since it was recorded (sha256 {sha256[:12]} then, "
                            f"{digest[:12]} now); restore it, or start a new campaign")
    key = (str(p), digest)
    if key in _IMPORTED:
        return _IMPORTED[key]
    name = f"kernelfi_user_{p.stem.replace('-', '_')}_{digest[:12]}"
    spec = importlib.util.spec_from_file_location(name, p)
    if spec is None or spec.loader is None:
        raise KernelfiError(f"{p}: not an importable Python file")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses and typing look their module up while it executes
    if str(p.parent) not in sys.path:  # its sibling modules import as when `python FILE` runs it
        sys.path.insert(0, str(p.parent))
    try:
        spec.loader.exec_module(mod)
    except Exception as e:
        del sys.modules[name]
        raise KernelfiError(f"{p}: importing the model file failed: {type(e).__name__}: {one_line(str(e))}") from e
    _IMPORTED[key] = mod
    return mod


def lookup(mod: ModuleType, qualname: str, where: str) -> Callable[..., Any]:
    """The top-level object ``qualname`` (``Net`` or ``Outer.build``) of an imported file."""
    obj: Any = mod
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            known = sorted(k for k, v in vars(mod).items() if callable(v) and not k.startswith("_")
                           and getattr(v, "__module__", None) == mod.__name__)
            raise KernelfiError(f"{where}: no top-level '{qualname}' in the file (callables defined there: "
                                f"{', '.join(known) or 'none'})")
    if not callable(obj):
        raise KernelfiError(f"{where}: '{qualname}' is not callable")
    return obj


def user_code(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` is the user's (defined outside kernelfi's own files)."""
    try:
        src = inspect.getsourcefile(fn)
    except TypeError:
        return True
    return src is None or _PACKAGE not in Path(src).resolve().parents


def source_of(fn: Callable[..., Any]) -> tuple[str, str] | None:
    """(absolute file, qualified name) by which another process finds ``fn`` again, or None for
    kernelfi's own builders and objects with no file. A function defined inside another one
    (``main.<locals>.build``) cannot be found again: that is an error, not a None."""
    try:
        src = inspect.getsourcefile(fn)
    except TypeError:
        src = None
    if src is None:
        return None
    path = Path(src).resolve()
    if _PACKAGE in path.parents or not path.is_file():
        return None
    qual = getattr(fn, "__qualname__", "")
    if any(lib in path.parents for lib in _LIBRARIES):
        raise KernelfiError(f"{getattr(fn, '__module__', '?')}.{qual} belongs to an installed library ({path.name}), "
                            "not to a file of yours, and is rebuilt only with the arguments your code gave it: pass "
                            "factory= a top-level function of your .py file that returns the model")
    if "<locals>" in qual or not qual:
        raise KernelfiError(f"{getattr(fn, '__name__', fn)} is defined inside a function ({qual}): define it at the "
                            f"top level of {path.name}, so worker processes and later commands can import it")
    return str(path), qual


def state_digest(module: nn.Module | Mapping[str, torch.Tensor]) -> str:
    """sha256 of a module's state dict (or of a state dict: names, dtypes, shapes, bytes, in
    order): what identifies weights that come from no file."""
    h = hashlib.sha256()
    state = module.state_dict() if isinstance(module, nn.Module) else module
    for k, t in state.items():
        t = t.detach().cpu().contiguous()
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def reproducible(make: Callable[[], nn.Module]) -> tuple[nn.Module, bool]:
    """``make()``, and whether the weights it sets are its own: the same on a second call. A
    builder that leaves PyTorch's default initialisation (drawn from the global generator) gives
    other weights every call: a worker or a later command would inject into another model, so
    such weights are no weights of the model's (the caller then draws seeded random ones)."""
    first = make()
    if not isinstance(first, nn.Module):
        return first, False
    return first, state_digest(first) == state_digest(make())


@dataclass(frozen=True)
class _Built:
    module: nn.Module
    input_shape: tuple[int, int, int]
    num_classes: int
    own: bool  # the factory's weights are the same on every call (``reproducible``)


def _build(path: Path, factory: str, sha256: str | None, input_shape: tuple[int, ...] | None,
           check_own: bool) -> _Built:
    where = f"{path}:{factory}"
    fn = lookup(import_file(path, sha256), factory, where)
    try:
        module, own = reproducible(fn) if check_own else (fn(), False)
    except Exception as e:
        raise KernelfiError(f"{where}: the factory failed: {type(e).__name__}: {one_line(str(e))}") from e
    if not isinstance(module, nn.Module):
        raise KernelfiError(f"{where}: the factory returned {type(module).__name__}, not a torch.nn.Module")
    shape = input_shape or getattr(module, "input_shape", None) or getattr(fn, "input_shape", None)
    if shape is None:
        raise KernelfiError(f"{where}: the input shape is unknown: give --input-shape C,H,W (or set input_shape "
                            "on the factory or the module)")
    shape = tuple(int(d) for d in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise KernelfiError(f"{where}: input shape {shape} is not (C, H, W)")
    module.eval().requires_grad_(False)  # the factory's fresh module: ours to put in eval mode
    with torch.no_grad():
        try:
            out = module(torch.zeros((1, *shape)))
        except Exception as e:
            raise KernelfiError(f"{where}: the model does not run on a {'x'.join(map(str, shape))} input: "
                                f"{type(e).__name__}: {one_line(str(e))}") from e
    return _Built(module, shape, int(out.numel()), own)  # type: ignore[arg-type]


def load_file_model(name: str, weights: str | None = None, seed: int = 0, input_shape: tuple[int, ...] | None = None,
                    sha256: str | None = None) -> LoadedModel:
    """Build the model of ``PATH.py:FACTORY`` in eval mode.

    ``weights``: ``None`` keeps the factory's own weights (identified by ``state_digest``) where
    they are the same on every call, else (PyTorch's default initialisation) draws seeded random
    ones, as ``"random"`` does (said in the note); a state dict file (``.safetensors``,
    ``.pt``/``.pth`` read weights-only) is loaded over them strictly.
    ``sha256``: the file's recorded content, checked before it is imported.
    """
    path, factory = parse_model_file(name)
    keep = weights in (None, FACTORY_WEIGHTS)
    b = _build(path, factory, sha256, input_shape, check_own=keep)
    module, c = b.module, b.input_shape[0]
    label = f"{path.stem}:{factory}"
    info = ModelInfo(label, b.input_shape, b.num_classes, (0.0,) * c, (1.0,) * c, None,
                     f"{factory} from {path}")
    if keep and b.own:
        digest = state_digest(module)
        return LoadedModel(module, info, FACTORY_WEIGHTS, digest,
                           f"the factory's own weights (state sha256 {digest[:12]})")
    if keep or weights == "random":
        try:
            init_random(module, seed)
        except TypeError as e:
            raise KernelfiError(f"{label}: no seeded random weights for this model ({e}); give --weights") from None
        desc = f"random:{label}:{state_digest(module)}:seed={seed}:{RANDOM_INIT_SCHEME}"
        return LoadedModel(module, info, f"random (seed {seed})", hashlib.sha256(desc.encode()).hexdigest(),
                           f"no trained weights: running with seeded random weights (seed {seed})")
    wpath = Path(weights)
    apply_state(module, load_state(wpath), wpath)
    module.eval().requires_grad_(False)
    return LoadedModel(module, info, str(wpath), sha256_file(wpath), f"weights from {wpath.name}")
