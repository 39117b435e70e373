"""Campaigns: the planner (seed -> faults), batches run by ``kernelfi.execution`` (faults ->
outcomes) in this process or a pool of workers, the results into the store."""
from kernelfi.campaign.campaign import replay, run_campaign
from kernelfi.campaign.prepared import CampaignConfig, Prepared, prepare
from kernelfi.campaign.planner import PlannedFault, Planner
from kernelfi.campaign.session import ModelSpec, Session, open_session

__all__ = ["CampaignConfig", "Prepared", "prepare", "replay", "run_campaign", "PlannedFault", "Planner",
           "ModelSpec", "Session", "open_session"]
