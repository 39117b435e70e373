"""Names, colours and number formats every part of the report shares.

Kept in one place so a category has the same label and colour in every figure and table, and a
rate is printed the same way everywhere (the tests recompute numbers and look for that text).
"""
from __future__ import annotations

import math
import re

from kernelfi.types import OUTCOME_LABELS

#: Outcome categories in the order the figures stack them (bottom first); Masked is the rest.
ERROR_CATEGORIES: tuple[str, ...] = (
    "due", "sdc_malfunction", "sdc_light_malfunction", "sdc_no_malfunction",
)
#: Every category a table shows, in the published studies' reading order.
TABLE_CATEGORIES: tuple[str, ...] = (
    "masked", "due", "sdc_no_malfunction", "sdc_light_malfunction", "sdc_malfunction", "sdc",
)
#: The outcomes' one name each (``kernelfi.types.OUTCOME_LABELS``), and their SDC total.
LABELS: dict[str, str] = {**OUTCOME_LABELS, "sdc": "SDC (all three)"}
COLORS: dict[str, str] = {
    "masked": "#bdbdbd",
    "due": "#7b3294",
    "sdc_no_malfunction": "#92c5de",
    "sdc_light_malfunction": "#f4a582",
    "sdc_malfunction": "#ca0020",
    "sdc": "#404040",
}


def pct(p: float, digits: int = 2) -> str:
    """A proportion as a percentage: ``0.02667 -> '2.67%'``; tiny non-zero rates get one more
    decimal (``0.00104 -> '0.104%'``) so the ResNet study's 0.104% stays readable."""
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "–"
    value = 100.0 * float(p)
    if 0.0 < abs(value) < 1.0:
        return f"{value:.{digits + 1}f}%"
    return f"{value:.{digits}f}%"


def interval(low: float, high: float) -> str:
    """``[1.36, 5.18]%`` – an interval in percent with two decimals."""
    if any(x is None or (isinstance(x, float) and math.isnan(x)) for x in (low, high)):
        return "–"
    return f"[{100 * low:.2f}, {100 * high:.2f}]%"


def slug(text: str) -> str:
    """A file-name-safe version of a label (figures and tables are saved under it)."""
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower() or "x"
