"""After a sweep: configurations ranked over seeds, the HTML report, exports to OpenMMLab
configs, ensembles and predictions, and `recheck` (which retrains the best through `sweep`).

Top of the library; only `cli` imports from here.
"""
