"""Golden accuracy: how often the fault-free model is right on a campaign's inputs.

A Malfunction SDC changes the top-1 class; read beside the golden accuracy it says how often
a fault turns a right answer wrong (or a wrong one into another). The labels come with the
campaign (``extra["labels"]``: ImageFolder class folders, an ``.npz``'s ``y``, the digits
labels; random inputs have none) and the golden predictions with its rows (every row holds
its input's ``golden_top1``), so no model runs here: the accuracy covers the inputs the
stored injections used, which for a campaign of many more injections than inputs is all of
them (``inputs`` < ``n_inputs`` says otherwise). A campaign that kept only correctly
classified inputs (``--select-inputs correct``) is right on all of them by construction; its
record says how many inputs it read to find them, which gives the accuracy on those.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from kernelfi.store import Store

__all__ = ["Accuracy", "golden_accuracy"]


@dataclass(frozen=True)
class Accuracy:
    """``correct`` of ``inputs`` (those with stored injections) of the campaign's ``n_inputs``;
    for a campaign that kept only correct inputs, ``read``: how many it read to keep them."""

    correct: int
    inputs: int
    n_inputs: int
    rule: str = "all"
    read: int | None = None

    @property
    def rate(self) -> float | None:
        return self.correct / self.inputs if self.inputs else None

    @property
    def read_rate(self) -> float | None:
        """Accuracy over the inputs read to select them (``rule`` "correct")."""
        return self.n_inputs / self.read if self.read else None

    def describe(self) -> str:
        """``golden accuracy 93.8% (15 of 16 inputs)``, or what a selection implies."""
        if self.rule == "correct" and self.read:
            return (f"golden accuracy 100% by selection: the {self.n_inputs} inputs classified correctly among "
                    f"the first {self.read} ({100 * (self.read_rate or 0):.1f}%)")
        if not self.inputs:
            return "golden accuracy: no injection stored yet"
        part = "" if self.inputs == self.n_inputs else f" injected so far, of {self.n_inputs}"
        return f"golden accuracy {100 * (self.rate or 0):.1f}% ({self.correct} of {self.inputs} inputs{part})"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rate": self.rate}


def golden_accuracy(store: Store, campaign_id: int) -> Accuracy | None:
    """The golden accuracy of one campaign, or ``None`` where its inputs carry no labels."""
    meta = store.campaign(campaign_id).meta
    labels = meta.extra.get("labels")
    if labels is None:
        return None
    top1 = store.golden_predictions(campaign_id)
    correct = sum(1 for i, p in top1.items() if 0 <= i < len(labels) and labels[i] == p)
    chosen = meta.extra.get("chosen") or {}
    return Accuracy(correct, len(top1), int(meta.n_inputs), str(chosen.get("rule", "all")), chosen.get("read"))
