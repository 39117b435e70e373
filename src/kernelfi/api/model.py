"""``Model``: the user's ``nn.Module`` (or model file, or registered name) as kernelfi builds it.

A campaign does not run the caller's instance: every process that needs the model (the driver,
its workers, a later ``replay`` or ``harden`` from the command line) rebuilds it from a
``ModelSpec``: the module's factory (a top-level function or class of a ``.py`` file, by its
absolute path, sha256 and name; ``kernelfi.models.user``) and, where the instance's weights are
not the factory's own, a safetensors state dict of them. Nothing is pickled, and the caller's
module is only read (its state dict, one forward pass in eval mode to check that the rebuilt
model computes what it computes).
"""
from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import save_file
from torch import nn

from kernelfi._utils import KernelfiError
from kernelfi.campaign.session import ModelSpec, Session, open_session
from kernelfi.lowering import Program, check_eval, lower
from kernelfi.lowering.profile import profile_dict
from kernelfi.models import LoadedModel, state_digest
from kernelfi.models.checkpoints import apply_state
from kernelfi.models.user import is_model_file, load_file_model, source_of

__all__ = ["Model"]


def _factory_name(module: nn.Module, factory: Callable[..., Any] | str | None) -> str:
    """``PATH.py:NAME`` of the factory that rebuilds ``module``'s architecture."""
    if isinstance(factory, str):
        if not is_model_file(factory):
            raise KernelfiError(f"factory '{factory}': expected PATH.py:NAME")
        return factory
    fn = factory if factory is not None else type(module)
    if factory is None:
        try:
            needs = [p.name for p in inspect.signature(fn).parameters.values()
                     if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        except (TypeError, ValueError):
            needs = ["?"]
        if needs:
            raise KernelfiError(f"{fn.__name__}({', '.join(needs)}) needs arguments, so another process cannot "
                                "rebuild it: pass factory= a top-level function of a .py file returning the model")
    found = source_of(fn)
    if found is None:
        raise KernelfiError(f"{getattr(fn, '__qualname__', fn)}: defined in no .py file of yours; define the model "
                            "(or its factory) in a .py file")
    return f"{found[0]}:{found[1]}"


class Model:
    """A model as kernelfi lowers it, injects into it and rebuilds it in other processes.

    ``Model(module, input_shape)`` takes an ``nn.Module`` instance in eval mode (training mode is
    refused: its lowering would differ from its forward) with its own weights, as they are when
    the ``Model`` is made (a copy: the module is never changed, nor read again); ``factory``
    (a top-level callable of a ``.py`` file, or ``"PATH.py:NAME"``) rebuilds its architecture,
    by default its class called with no arguments. ``Model.file("net.py:build")`` and
    ``Model.registered("resnet18", weights=...)`` name a model as the command line does.
    """

    def __init__(self, module: nn.Module, input_shape: tuple[int, int, int], *,
                 factory: Callable[..., Any] | str | None = None) -> None:
        if not isinstance(module, nn.Module):
            raise KernelfiError(f"Model: expected a torch.nn.Module, got {type(module).__name__}")
        check_eval(module, type(module).__name__)
        self.from_instance = True  #: made from a module instance (not a file or a registered name)
        self.input_shape = tuple(int(d) for d in input_shape)
        self._spec = ModelSpec(_factory_name(module, factory), input_shape=self.input_shape).resolved()
        rebuilt = load_file_model(self._spec.model, input_shape=self.input_shape,
                                  sha256=self._spec.source_sha256).module
        state = {k: v.detach().clone() for k, v in module.state_dict().items()}  # the weights as they are now
        self._digest = state_digest(state)
        self._own = state_digest(rebuilt) == self._digest  # the factory sets these weights itself
        if not self._own:
            apply_state(rebuilt, state, f"{type(module).__name__} (the instance's weights)")
        self._check_same(module, rebuilt)
        self._state = None if self._own else state
        self._session: Session | None = None

    @classmethod
    def file(cls, model: str, *, input_shape: tuple[int, int, int] | None = None,
             weights: str | os.PathLike[str] | None = None, seed_weights: int = 0) -> "Model":
        """A model file ``PATH.py:FACTORY`` (``kernelfi campaign PATH.py:FACTORY``); ``weights``: a
        state dict file (safetensors, or ``torch.save`` of tensors, read weights-only), or
        ``"random"``; default the factory's own."""
        if not is_model_file(model):
            raise KernelfiError(f"{model}: expected PATH.py:FACTORY")
        return cls._of(ModelSpec(model, None if weights is None else os.fspath(weights), None, seed_weights,
                                 input_shape=input_shape))

    @classmethod
    def registered(cls, name: str, *, weights: str | os.PathLike[str] | None = None, num_classes: int | None = None,
                   seed_weights: int = 0) -> "Model":
        """A registered model (``kernelfi models``, or one you registered with ``register_model``)
        or a Darknet ``.cfg`` path, with weights as ``--weights`` takes them."""
        return cls._of(ModelSpec(name, None if weights is None else os.fspath(weights), num_classes, seed_weights))

    @classmethod
    def _of(cls, spec: ModelSpec) -> "Model":
        self = cls.__new__(cls)
        self.from_instance, self._own, self._state, self._session, self._digest = False, True, None, None, ""
        self._spec = spec.resolved()
        self.input_shape = tuple(self.loaded.info.input_shape)
        return self

    def _check_same(self, module: nn.Module, rebuilt: nn.Module) -> None:
        """The rebuilt model must compute what the instance computes (bit for bit, same ops)."""
        x = torch.randn((2, *self.input_shape), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            a, b = module(x), rebuilt(x)
        if not torch.equal(a, b):
            raise KernelfiError(f"the factory builds a model that computes otherwise than the instance (max |diff| "
                                f"{float((a - b).abs().max()):.3g}): pass factory= one that builds this module")

    def spec(self, weights_dir: str | os.PathLike[str] | None = None) -> ModelSpec:
        """How every process rebuilds this model: the factory and, where the instance's weights are
        not the factory's own, their safetensors file in ``weights_dir`` (named by content, written
        once)."""
        if self._state is None:
            return self._spec
        if weights_dir is None:
            raise KernelfiError("this model's weights need a directory to be written to (weights_dir)")
        d = Path(weights_dir)
        d.mkdir(parents=True, exist_ok=True)
        path = d / f"{self._digest[:20]}.safetensors"
        if not path.is_file():
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            save_file({k: v.cpu().contiguous() for k, v in self._state.items()}, str(tmp))
            tmp.replace(path)
        return ModelSpec(self._spec.model, str(path.resolve()), None, 0, input_shape=self.input_shape,
                         source_sha256=self._spec.source_sha256)

    @property
    def loaded(self) -> LoadedModel:
        """The model as a campaign builds it (weights from the factory, the instance or the registry)."""
        return self.session().loaded

    def session(self) -> Session:
        """Model, lowered program and provenance, as a campaign opens them (built once)."""
        if self._session is None:
            self._session = self._open()
        return self._session

    def _open(self) -> Session:
        if self._state is not None:  # an in-memory build: the rebuilt model with the instance's weights
            loaded = load_file_model(self._spec.model, input_shape=self.input_shape,
                                     sha256=self._spec.source_sha256)
            apply_state(loaded.module, self._state, "the instance's weights")
            program = lower(loaded.module, loaded.info.input_shape, loaded.info.name)
            loaded = LoadedModel(loaded.module, loaded.info, "module", self._digest, "the instance's weights")
            return Session(self._spec, loaded, program, None)
        return open_session(self._spec)

    @property
    def name(self) -> str:
        """The model's name in results and plans (``net:Tiny`` for a model file's ``Tiny``)."""
        return self.loaded.info.name

    def lower(self) -> Program:
        """The kernel program kernelfi runs for this model (``kernelfi.lowering.Program``)."""
        return self.session().program

    def profile(self) -> dict[str, Any]:
        """Per-launch dynamic instruction profile (``kernelfi profile --format json``)."""
        return profile_dict(self.lower().trace)

    def lowering_error(self, x: torch.Tensor) -> float:
        """Largest |logit| difference between the lowered program and the module's own forward on
        ``x`` (N, C, H, W), relative to the largest |logit|: how exactly it lowers."""
        s = self.session()
        program = s.program
        with torch.no_grad():
            native = s.loaded.module(x).reshape(x.shape[0], -1)
            mem = program.run(program.memory(x.to(torch.float32)))
            low = mem[program.trace.logits].reshape(x.shape[0], -1)
        return float((low - native).abs().max() / native.abs().max().clamp_min(1e-30))

