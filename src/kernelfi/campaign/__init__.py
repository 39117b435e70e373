"""Campaigns: the planner (seed -> faults), batches run by ``kernelfi.execution`` (faults ->
outcomes) in this process or a pool of workers, the results into the store.

``run_campaign`` runs (or resumes) one into a results database; ``prepare`` builds what it
needs (model, inputs, planner); ``replay`` re-executes one stored injection, and
``stored_config``/``prepare_stored`` rebuild a stored campaign from its record.
"""
from kernelfi.campaign.campaign import run_campaign
from kernelfi.campaign.prepared import CampaignConfig, Prepared, prepare
from kernelfi.campaign.planner import PlannedFault, Planner
from kernelfi.campaign.session import InputSelection, ModelSpec, Session, open_session
from kernelfi.campaign.stored import prepare_stored, replay, stored_config

__all__ = ["CampaignConfig", "Prepared", "prepare", "replay", "run_campaign", "PlannedFault", "Planner",
           "ModelSpec", "Session", "open_session", "InputSelection", "prepare_stored", "stored_config"]
