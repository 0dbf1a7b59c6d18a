"""One trial, in its own process: the epoch loop (`python -m sweeper.train.worker`), the timm
model, the mmcv-compatible lr schedule and the per-epoch resume state.

Imports `data` and `spec`; never Optuna, never the orchestrator.
"""
