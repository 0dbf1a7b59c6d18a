"""Images: listing and splitting a dataset, decoding it once into a memory-mapped cache,
inspecting it, and turning it into a trial's augmented, normalised batches (transforms and
DataLoaders, as `timm.data` groups them).

Imports `spec` (policies, TrialConfig) and the top-level `cpu_share`; nothing from above.
"""
