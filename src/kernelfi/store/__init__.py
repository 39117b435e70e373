"""The results store: a versioned, crash-safe SQLite database of campaigns and injections.

No torch here (the analysis layer and the report read results on machines without it).
Schema and guarantees: ``docs/store.md``.
"""
from __future__ import annotations

from .db import Store
from .records import (
    KEY_FIELDS, CampaignMeta, CampaignRow, InjectionRecord, LaunchRow, LayerRow, ToolErrorRecord,
)
from .schema import APPLICATION_ID, MIGRATIONS, Migration, latest_version

__all__ = [
    "APPLICATION_ID", "KEY_FIELDS", "MIGRATIONS", "CampaignMeta", "CampaignRow",
    "InjectionRecord", "LaunchRow", "LayerRow", "Migration", "Store", "ToolErrorRecord", "latest_version",
]
