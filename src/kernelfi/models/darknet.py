"""Darknet front end: ``.cfg`` + ``.weights`` -> LayerSpecs, a state dict and a native forward.

Split in three for size: :mod:`.darknet_cfg` (parser and Darknet's shape rules),
:mod:`.darknet_weights` (the binary weights format) and :mod:`.darknet_net` (the reference
forward).  Import from here; the split is an implementation detail.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

from .darknet_cfg import ACTIVATIONS, CfgWarning, Section, as_chw, build_layers, parse_cfg, parse_cfg_text
from .darknet_net import BN_EPS, DarknetNet, activate, load_darknet, random_state
from .darknet_weights import (DEFAULT_VERSION, read_weights, weight_roles_in_file_order,
                              weight_shapes, write_weights)

__all__ = [
    "ACTIVATIONS", "BN_EPS", "CfgWarning", "DEFAULT_VERSION", "DarknetNet", "Section", "activate", "as_chw",
    "asset_path", "build_layers", "load_darknet", "parse_cfg", "parse_cfg_text", "random_state",
    "read_weights", "weight_roles_in_file_order", "weight_shapes", "write_weights",
]


def asset_path(name: str) -> Path:
    """Path of a cfg shipped in ``kernelfi/assets`` (e.g. ``alexnet.cfg``)."""
    return Path(str(resources.files("kernelfi").joinpath("assets", name)))
