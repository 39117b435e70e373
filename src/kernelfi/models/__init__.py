"""Models: torchvision-compatible architectures, the registry, checkpoints, digits models, and
the user's own model files (``PATH.py:FACTORY``, ``kernelfi.models.user``).

Importing the package registers the built-in models (``kernelfi.models.builtin``).
Darknet cfg support lives in ``kernelfi.models.darknet`` and is imported only when used.
"""
from kernelfi.models.architectures import (
    AlexNet, BasicBlock, Bottleneck, ResNet, resnet18, resnet34, resnet50, resnet101, resnet152,
)
from kernelfi.models.checkpoints import apply_state, load_state
from kernelfi.models.digits import DigitsAlexNet, DigitsResNet
from kernelfi.models.registry import (
    LoadedModel, ModelInfo, ensure_registered, get_model_info, list_models, load_model, register_darknet,
    register_model, registration,
)
from kernelfi.models.user import is_model_file, load_file_model, state_digest
from kernelfi.models import builtin as _builtin  # noqa: F401  (registers the built-ins)

__all__ = [
    "AlexNet", "BasicBlock", "Bottleneck", "ResNet",
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "DigitsAlexNet", "DigitsResNet",
    "ModelInfo", "LoadedModel", "register_model", "register_darknet",
    "list_models", "get_model_info", "load_model", "load_state", "apply_state",
    "registration", "ensure_registered", "is_model_file", "load_file_model", "state_digest",
]
