"""Options shared by several subcommands, and the conventions every command follows.

For a command added anywhere in ``kernelfi.cli``:

- Every option has ``help=`` (and ``show_default=True`` where it has a default): a test walks
  every command of the ``cli`` group, so new ones are checked too. Build shared options with
  the decorators here (``model_options``, ``data_options``) rather than declaring them again.
- Check every option before the first output a user might read as progress: raise
  ``KernelfiError`` (one line, exit status 2) or ``click.BadParameter``; draw progress bars on
  their first update, not before (``kernelfi.cli.campaign_cmds`` does).
- Say each default or conversion that changes what is measured in one ``note: ...`` line on
  stderr (``note``); the library returns those lines (``Prepared.notes``, ``Session.notes``).
- Name outcomes with ``kernelfi.types.OUTCOME_LABELS`` (``outcome_counts``); JSON output keeps
  the keys (``masked``, ``due``, ``sdc_no_malfunction`` ...).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import click

from kernelfi.campaign.session import SELECT_RULES
from kernelfi.data import FITS, PrepOptions
from kernelfi.store import ToolErrorRecord
from kernelfi.types import OUTCOME_LABELS, OUTCOMES
#: exit status of a command whose campaigns hold tool errors (2 is a user error, 1 a replay
#: that differs from its row)
TOOL_ERROR_EXIT = 3


def tool_errors_exit(errors: Mapping[int, Sequence[ToolErrorRecord]]) -> None:
    """Say loudly, on stderr, that the tool failed on some faults, and exit ``TOOL_ERROR_EXIT``."""
    for cid, errs in errors.items():
        first = errs[0]
        again = first.replay or f"kernelfi replay --campaign {cid} --id {first.id}"
        click.echo(f"kernelfi: error: the tool failed on {len(errs)} fault{'s' * (len(errs) != 1)} of campaign "
                   f"{cid} (tool errors: not results, in no rate); first, injection {first.id}: {first.error}; "
                   f"re-run it: {again}", err=True)
    raise SystemExit(TOOL_ERROR_EXIT)


F = Callable[..., Any]

WEIGHTS_HELP = (".pth/.pt state dict (read weights-only), .safetensors, or Darknet .weights for cfg models; "
                "'random' for seeded random weights (the default of kernelfi's models without embedded weights, said "
                "in a note; a model file's or a registered user builder's own weights are kept unless given)")


MODEL_HELP = ("MODEL: a registered name (`kernelfi models`), a Darknet .cfg path, or a model file PATH.py:FACTORY "
              "(a top-level function or class of the file returning the nn.Module with its weights; its path and "
              "sha256 are recorded, so later commands work from any directory and refuse the file once changed)")


def _shape(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, int, int] | None:
    if value is None:
        return None
    try:
        dims = tuple(int(v) for v in value.replace("x", ",").split(","))
    except ValueError:
        dims = ()
    if len(dims) != 3 or min(dims) < 1:
        raise click.BadParameter(f"expected C,H,W (three positive integers), got '{value}'")
    return dims  # type: ignore[return-value]


INPUT_SHAPE_HELP = ("input shape C,H,W of a model file PATH.py:FACTORY (default: the input_shape attribute of "
                    "its factory or module)")


def input_shape_option(fn: F) -> F:
    """--input-shape (parameter ``input_shape``): a model file's (C, H, W)."""
    return click.option("--input-shape", callback=_shape, default=None, help=INPUT_SHAPE_HELP)(fn)


def model_options(fn: F) -> F:
    """MODEL argument plus --weights/--num-classes/--seed-weights/--input-shape (parameters
    ``model``, ``weights``, ``num_classes``, ``seed_weights``, ``input_shape``)."""
    fn = input_shape_option(fn)
    fn = click.option("--seed-weights", type=int, default=0, show_default=True,
                      help="seed of the random weights used when a model has no trained weights")(fn)
    fn = click.option("--num-classes", type=int, default=None,
                      help="classifier width of alexnet/resnet* (default: the checkpoint's, else 1000)")(fn)
    fn = click.option("--weights", type=click.Path(), default=None, help=WEIGHTS_HELP)(fn)
    return click.argument("model")(fn)


def _floats(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        return tuple(float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got '{value}'") from None


def _size(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    parts = value.lower().split("x")
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        dims = ()
    if len(dims) not in (1, 2) or min(dims, default=0) < 1:
        raise click.BadParameter(f"expected N or HxW in pixels, got '{value}'")
    return (dims[0], dims[-1])


DATA_HELP = ("the inputs: 'digits' (the embedded test split of the digits models), an ImageFolder directory "
             "(one subfolder per class: labels from the sorted folder names; images prepared as --fit says), "
             "an .npz archive (x: inputs at the model's size, y: optional labels, normalized: optional flag), "
             "or 'random' (seeded uniform images, no labels). Required for models without embedded data")


def data_options(fn: F) -> F:
    """--data, --inputs, --select-inputs and the image preparation options (parameters
    ``data``, ``inputs``, ``select_inputs``, ``fit``, ``resize``, ``crop``, ``mean``, ``std``,
    ``no_normalize``; ``prep_options`` turns the last six into a ``PrepOptions``)."""
    options = [
        click.option("--data", default=None, help=DATA_HELP),
        click.option("--inputs", type=click.IntRange(min=1), default=None,
                     help="use the first N inputs of the data (with --select-inputs correct: the first N "
                          "the model classifies correctly); default all (random: 16)"),
        click.option("--select-inputs", type=click.Choice(SELECT_RULES), default="all", show_default=True,
                     help="which inputs to inject into: all, or only those the fault-free model classifies "
                          "correctly (labelled data; how fault-injection studies usually choose inputs)"),
        click.option("--fit", type=click.Choice(FITS), default=None,
                     help="how images are fit to the model's input: crop = resize the short side (--resize), "
                          "centre crop (--crop), torchvision's evaluation transform, the default for 3-channel "
                          "models; letterbox = Darknet's (aspect ratio kept, 0.5 grey border), the default for "
                          "cfg models; stretch = resize to the input size, the default for other models"),
        click.option("--resize", type=click.IntRange(min=1), default=None,
                     help="--fit crop: the short side before the crop, in pixels (default 256 x crop / 224: "
                          "256 for a 224 input)"),
        click.option("--crop", callback=_size, default=None,
                     help="--fit crop: the centre crop, N or HxW pixels (default the model's input size; "
                          "another size is then resized to it)"),
        click.option("--mean", callback=_floats, default=None,
                     help="per-channel mean subtracted from [0, 1] pixels, comma-separated (default the "
                          "model's: ImageNet's for alexnet/resnet*, none for cfg models)"),
        click.option("--std", callback=_floats, default=None,
                     help="per-channel standard deviation divided by, comma-separated (default the model's)"),
        click.option("--no-normalize", is_flag=True,
                     help="feed [0, 1] pixels as they are, without mean/std"),
    ]
    for opt in reversed(options):
        fn = opt(fn)
    return fn


def prep_options(fit: str | None, resize: int | None, crop: tuple[int, int] | None,
                 mean: tuple[float, ...] | None, std: tuple[float, ...] | None, no_normalize: bool) -> PrepOptions:
    """The preparation options ``data_options`` parsed, validated (a ``KernelfiError`` line)."""
    return PrepOptions(fit=fit, resize=resize, crop=crop, mean=mean, std=std, normalize=not no_normalize)


def note(line: str) -> None:
    """One line on stderr about a default or conversion that changes what is measured."""
    click.echo(line if line.startswith("note: ") else f"note: {line}", err=True)


def outcome_counts(counts: Mapping[str, int], total: int | None = None) -> str:
    """``Masked 700 (70.0%), DUE 12 (1.2%), ...`` in the outcomes' order, with their one name."""
    n = max(total if total is not None else sum(counts.values()), 1)
    return ", ".join(f"{OUTCOME_LABELS[o]} {counts.get(o, 0)} ({100 * counts.get(o, 0) / n:.1f}%)" for o in OUTCOMES)
