"""The pandas frames of a results database, one per table (what the analysis reads).

A mixin of ``Store``: it needs the store's connection (``_con``), path and schema version.
pandas is imported when a frame is asked for: resuming workers and the crash test need none.
"""
from __future__ import annotations

import json
import sqlite3
from typing import TYPE_CHECKING

from kernelfi.types import GROUPS

from .columns import ERR_COLS, GROUP_COLS, INJ_COLS, REAL_COLS, CampaignIds, campaign_list, guarded
from .records import CampaignRow

if TYPE_CHECKING:
    import pandas as pd


class Frames:
    """``injections_frame``, ``propagation_frame``, ``tool_errors_frame``, ``launches_frame``,
    ``layers_frame``, ``campaigns_frame``: ``campaign_ids`` an int, an iterable or None (all)."""

    path: str
    _con: sqlite3.Connection
    _version: int

    def campaigns(self) -> list[CampaignRow]:  # pragma: no cover - Store's
        raise NotImplementedError

    def _frame(self, sql: str, campaign_ids: CampaignIds, order: str) -> "pd.DataFrame":
        import pandas as pd  # lazily: resume workers and the crash test need no pandas

        ids = campaign_list(campaign_ids)
        params: list[int] = []
        if ids is not None:
            sql += f" WHERE campaign IN ({','.join('?' * len(ids))})"
            params = ids
        return pd.read_sql_query(f"{sql} ORDER BY {order}", self._con, params=params)

    @guarded
    def injections_frame(self, campaign_ids: CampaignIds = None) -> "pd.DataFrame":
        """One row per injection (columns as the table; ``warp`` bool; NaN/NULL reals as NaN)."""
        import pandas as pd

        df = self._frame(f"SELECT campaign, {', '.join(INJ_COLS)} FROM injections",
                         campaign_ids, "campaign, id")
        df["warp"] = df["warp"].astype(bool)
        for c in REAL_COLS:
            df[c] = pd.to_numeric(df[c], errors="coerce").astype(float)
        return df

    @guarded
    def propagation_frame(self, campaign_ids: CampaignIds = None) -> "pd.DataFrame":
        """One row per (injection, downstream layer): corrupted, numel, max_abs, max_rel."""
        import pandas as pd

        df = self._frame("SELECT campaign, injection, layer, corrupted, numel, max_abs, max_rel "
                         "FROM propagation", campaign_ids, "campaign, injection, layer")
        for c in ("max_abs", "max_rel"):
            df[c] = pd.to_numeric(df[c], errors="coerce").astype(float)
        return df

    @guarded
    def tool_errors_frame(self, campaign_ids: CampaignIds = None) -> "pd.DataFrame":
        """One row per injection the tool failed to run, with its launch's name and kernel
        (no rows, same columns, for a file older than version 2)."""
        import pandas as pd

        cols = ["campaign", *ERR_COLS, "created", "launch_name", "kernel"]
        if self._version < 2:
            return pd.DataFrame(columns=cols)
        df = self._frame("SELECT * FROM (SELECT t.*, l.name AS launch_name, l.kernel FROM tool_errors t "
                         "JOIN launches l ON l.campaign = t.campaign AND l.idx = t.launch)",
                         campaign_ids, "campaign, id")
        return df[cols]

    @guarded
    def launches_frame(self, campaign_ids: CampaignIds = None) -> "pd.DataFrame":
        """The trace profile: one row per launch, a column per instruction group (FP32, LD, …)."""
        df = self._frame(
            f"SELECT campaign, idx AS launch, name, kernel, layer, layer_type, "
            f"{', '.join(f'{c} AS {g}' for c, g in zip(GROUP_COLS, GROUPS))}, threads, registers "
            "FROM launches", campaign_ids, "campaign, idx")
        return df

    @guarded
    def layers_frame(self, campaign_ids: CampaignIds = None) -> "pd.DataFrame":
        return self._frame("SELECT campaign, idx AS layer, type, name, numel FROM layers",
                           campaign_ids, "campaign, idx")

    @guarded
    def campaigns_frame(self) -> "pd.DataFrame":
        """Campaign metadata flattened (hardening/extra as JSON text), plus ``n_done``."""
        import pandas as pd

        rows = []
        for c in self.campaigns():
            m = c.meta
            rows.append({
                "campaign": c.id, "key": c.key, "created": c.created, "model": m.model,
                "mode": m.mode, "bit_model": m.bit_model, "warp": m.warp, "seed": m.seed,
                "n_planned": m.n_planned, "n_done": c.n_done, "weights_hash": m.weights_hash,
                "weights_source": m.weights_source, "input_source": m.input_source,
                "n_inputs": m.n_inputs, "scope": m.scope, "selection": m.selection,
                "hardening": None if m.hardening is None else json.dumps(m.hardening, sort_keys=True),
                "derating": m.derating, "tool_version": m.tool_version,
                "extra": json.dumps(dict(m.extra), sort_keys=True)})
        return pd.DataFrame(rows)
