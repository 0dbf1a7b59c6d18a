"""What a trial's value means: every trained epoch counts, `search.value: last | best`, and the
kept checkpoint holds the weights of the epoch whose score became the value."""

from __future__ import annotations

import optuna
import pytest
import torch
from optuna.trial import TrialState
from typer.testing import CliRunner

from sweeper.cli import app
from sweeper.data import datasets
from sweeper.data.augment import Normalize, eval_transform
from sweeper.data.loading import CachedImages
from sweeper.spec.trial_config import TrialConfig
from sweeper.testing import tiny_space, write_space
from sweeper.train import model as models
from sweeper.train.device import Amp, precision_here
from sweeper.train.evaluation import evaluate

runner = CliRunner()


def _run(tmp_path, monkeypatch, doc):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["run", "--space", str(write_space(tmp_path / "space.yaml", doc))])
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name=doc["study"], storage=f"sqlite:///{tmp_path}/studies.db")
    return result, sorted(study.get_trials(), key=lambda t: t.number)


@pytest.mark.slow
@pytest.mark.parametrize("epochs", [1, 2])
def test_a_trial_that_trained_every_epoch_is_complete_whatever_the_pruner_says(
        colour_folder, tmp_path, monkeypatch, epochs):
    # the threshold pruner wants every trial stopped (val_acc is never above 2)
    doc = tiny_space(colour_folder, study="final", train={"epochs": epochs, "batch_size": 16},
                     search={"n_trials": 2, "sampler": {"name": "random", "seed": 0},
                             "pruner": {"name": "threshold", "lower": 2.0}})
    _, trials = _run(tmp_path, monkeypatch, doc)
    if epochs == 1:  # the only epoch is the last: nothing left to save by stopping
        assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
        assert all((tmp_path / "trials" / "final" / str(t.number) / "checkpoint.pth").is_file()
                   for t in trials)
    else:
        assert [t.state for t in trials] == [TrialState.PRUNED] * 2
        assert all(t.user_attrs["reason"] == "pruned after epoch 1" for t in trials)


def _checkpoint_score(trial_dir, objective: str) -> float:
    config = TrialConfig.from_json((trial_dir / "config.json").read_text())
    d = datasets.load(trial_dir.parent.parent / ".cache" / config.data_cache.rsplit("/", 1)[-1])
    val = CachedImages(d.val, eval_transform(config.image_size))
    net = models.create(config.model, len(d.classes), False)
    net.load_state_dict(torch.load(trial_dir / "checkpoint.pth", weights_only=True)["state_dict"])
    loader = torch.utils.data.DataLoader(val, 64)
    return evaluate(net.to(memory_format=torch.channels_last), loader,
                    Normalize(config.mean, config.std, torch.device("cpu")),
                    Amp(precision_here(config.precision, torch.device("cpu")), torch.device("cpu")),
                    len(d.classes))[objective]


@pytest.mark.slow
@pytest.mark.parametrize("rule", ["last", "best"])
def test_value_rule_picks_the_epoch_and_its_weights(colour_folder, tmp_path, monkeypatch, rule):
    # a large lr makes the accuracy move up and down between epochs
    doc = tiny_space(colour_folder, study=f"value-{rule}",
                     train={"epochs": 4, "batch_size": 8, "schedule": "step", "milestones": [3]},
                     search={"n_trials": 3, "sampler": {"name": "random", "seed": 3}, "pruner": "none",
                             "value": rule},
                     space={"lr": {"low": 0.3, "high": 3.0, "log": True}})
    result, trials = _run(tmp_path, monkeypatch, doc)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    for t in trials:
        curve = t.intermediate_values
        epoch = max(curve, key=lambda e: (curve[e], -e)) if rule == "best" else max(curve)
        assert t.value == curve[epoch] and t.user_attrs["value_epoch"] == epoch
        trial_dir = tmp_path / "trials" / f"value-{rule}" / str(t.number)
        assert _checkpoint_score(trial_dir, "val_acc") == pytest.approx(t.value)
    if rule == "best":
        assert any(max(t.intermediate_values.values()) > t.intermediate_values[4] for t in trials), \
            "the test needs a trial whose best epoch is not its last"
    best = runner.invoke(app, ["best", "--study", f"value-{rule}"])
    assert f"of the {rule} epoch (epoch " in best.output
    report = runner.invoke(app, ["report", "--study", f"value-{rule}"])
    html = (tmp_path / "trials" / f"value-{rule}" / "report.html").read_text()
    assert report.exit_code == 0 and f"of the {rule} epoch (epoch" in html
