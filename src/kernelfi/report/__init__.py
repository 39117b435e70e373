"""The HTML/CSV/Parquet report of a results database: figures, tables, FIT, the published studies compared.

Level above ``kernelfi.analysis``: it only reads a results database (``kernelfi.store``) and
calls the analysis library; no torch, no campaign code, so a report builds anywhere.
Entry point: :func:`build_report`; ``docs/report.md`` explains every part of the page.
"""
from __future__ import annotations

from .build import ReportOptions, build_report

__all__ = ["ReportOptions", "build_report"]
