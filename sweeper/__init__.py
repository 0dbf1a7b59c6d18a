"""sweeper: hyperparameter sweeps for fine-tuning image classifiers."""

__version__ = "0.1.0"
