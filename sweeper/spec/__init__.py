"""What to search: the search-space file parsed into a typed SweepSpec, the knobs and their
defaults, parameters and conditions, augmentation policy sets, and the fully resolved
TrialConfig that a worker trains.

Imports only `search` and `errors` from sweeper (plus PyYAML, and Optuna through `search`).
`trial_config` and `knobs` import nothing heavy (timm lazily, to resolve a model's
normalisation), so the worker reads a TrialConfig without importing Optuna.
"""
