"""A trial as a search-space file with every knob fixed, which `sweeper run --space` retrains."""

from __future__ import annotations

from typing import Any

import yaml

from sweeper.spec.knobs import KNOBS
from sweeper.spec.trial_config import TrialConfig


def yaml_space(config: TrialConfig, value: float | None = None) -> str:
    """A search-space file with every knob fixed at this trial's values (`sweeper run` retrains it)."""
    doc: dict[str, Any] = {"study": f"{config.study}-trial{config.number}"}
    data: dict[str, Any] = {"root": config.data_root} if config.data_root else {"builtin": config.data_builtin}
    data.update({"val_fraction": config.val_fraction, "num_workers": config.num_workers})
    if config.test_fraction or config.data_test:  # the retrain is tested on the same held-out images
        data.update({"test_fraction": config.test_fraction, "test": config.data_test})
    doc["data"] = data
    for knob in KNOBS:
        node = doc
        for key in knob.path[:-1]:
            node = node.setdefault(key, {})
        node[knob.path[-1]] = getattr(config, knob.name)
    ops = config.augment_ops
    if config.augment not in ("none", "flip_crop"):
        doc["augment_policies"] = {config.augment: list(ops or [])}
    doc["search"] = {"n_trials": 1, "sampler": "random", "pruner": "none",
                     "objective": config.objective, "value": config.value}
    head = (f"# trial {config.number} of study {config.study!r}"
            + (f" ({config.objective} {value:.4f})" if value is not None else "")
            + ", every knob fixed: sweeper run --space THIS_FILE\n")
    return head + yaml.safe_dump(doc, sort_keys=False)
