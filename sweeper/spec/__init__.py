"""What to search: the search-space file parsed into a typed SweepSpec, the knobs and their
defaults, parameters and conditions, augmentation policy sets, and the fully resolved
TrialConfig that a worker trains.

Imports only `search`, `errors` and the standard library (timm lazily, to resolve a model's
normalisation), so the worker can read a TrialConfig without importing Optuna.
"""
