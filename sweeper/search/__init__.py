"""How Optuna searches: samplers and pruners by name, and asha's pause-and-promote rule.

Bottom layer beside `store`: imports only Optuna and `sweeper.errors`.
"""
