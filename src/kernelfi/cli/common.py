"""Options shared by several subcommands."""
from __future__ import annotations

from typing import Any, Callable

import click


def model_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """MODEL argument plus --weights/--num-classes/--seed-weights."""
    fn = click.option("--seed-weights", "seed", type=int, default=0, show_default=True,
                      help="seed of the random weights used when a model has no trained weights")(fn)
    fn = click.option("--num-classes", type=int, default=None, help="classifier width (alexnet)")(fn)
    fn = click.option("--weights", type=click.Path(), default=None,
                      help=".pth/.pt (weights_only), .safetensors or Darknet .weights")(fn)
    return click.argument("model")(fn)
