"""Bad input: exit code 2, one message naming the YAML path or option, no traceback, and the
study store byte-for-byte unchanged."""

from __future__ import annotations

import hashlib
from pathlib import Path

import optuna
import pytest
import yaml
from typer.testing import CliRunner

from sweeper.cli import app
from sweeper.testing import huge_png, make_image_folder, tiny_space

runner = CliRunner()


def doc_with(folder, **changes):
    return yaml.safe_dump(tiny_space(folder, **changes), sort_keys=False)


def raw(text):
    return lambda folder: text


def changed(**changes):
    return lambda folder: doc_with(folder, **changes)


def mismatched_classes(folder):
    root = make_image_folder(folder.parent / "mismatch", classes=2, per_class=6)
    (root / "val" / "class_1").rename(root / "val" / "class_7")
    return doc_with(root)


def empty_folder(folder):
    root = folder.parent / "empty"
    for split in ("train", "val"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True, exist_ok=True)
    return doc_with(root)


def broken_image(folder):
    root = make_image_folder(folder.parent / "broken", classes=2, per_class=6)
    (root / "train" / "class_0" / "bad.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return doc_with(root)


def extra_class_in_test(folder):
    root = make_image_folder(folder.parent / "extra_test_class", classes=2, per_class=6)
    make_image_folder(root / "test", classes=3, per_class=3, split=False)
    return doc_with(root)


def empty_test_folder(folder):
    root = make_image_folder(folder.parent / "empty_test", classes=2, per_class=6)
    for c in ("class_0", "class_1"):
        (root / "test" / c).mkdir(parents=True)
    return doc_with(root)


def laughs(levels: int) -> str:
    """A "billion laughs" space file: each level lists the one before ten times (9 levels: 10**9
    strings from about 400 bytes), used where a number is expected."""
    lines = ["study: laughs", "data: {builtin: digits}", "model: {name: test_resnet}", 'l0: &l0 ["lol"]']
    for i in range(1, levels + 1):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]")
    return "\n".join([*lines, f"train: {{epochs: *l{levels}}}", ""])


def huge_image(folder):
    root = make_image_folder(folder.parent / "huge", classes=2, per_class=6)
    huge_png(root / "train" / "class_0" / "huge.png")
    return doc_with(root)


def latin1(folder):
    return (doc_with(folder) + "# r\u00e9sum\u00e9 of the manual runs\n").encode("latin-1")


CASES = [
    # id, space file text or bytes (from the data folder), extra arguments, expected in the message
    ("not-utf8", latin1, [], "byte "),
    ("top5-with-few-classes", changed(search={"objective": "val_top5"}), [],
     "search.objective: val_top5 is always 1.0 with 3 classes"),
    ("unknown-value-rule", changed(search={"value": "max"}), [], "search.value: unknown 'max'"),
    ("yaml-syntax", raw("study: x\nspace: {lr: [0.1, 0.2\n"), [], "line 3"),
    ("python-tag", raw("study: !!python/object/apply:os.system ['true']\n"), [], "remove the !! tag"),
    ("duplicate-key", raw("study: a\nmodel: {name: resnet18}\nmodel: {name: resnet50}\n"), [],
     "duplicate key 'model'"),
    ("not-a-mapping", raw("- just\n- a list\n"), [], "must be a YAML mapping"),
    ("billion-laughs", raw(laughs(9)), [], "space.yaml: line 4, column 5: invalid YAML: anchors and aliases"),
    ("anchor", raw("study: &name x\ndata: {builtin: digits}\n"), [], "line 1, column 8: invalid YAML: anchors"),
    ("unknown-top-key", changed(serach={"n_trials": 3}), [], "serach: unknown key; did you mean 'search'?"),
    ("unknown-nested-key", changed(model={"name": "test_resnet", "frozen_stage": 1}), [],
     "model.frozen_stage: unknown key; did you mean 'frozen_stages'?"),
    ("unknown-space-knob", changed(space={"learning_rate": [0.1]}), [], "space.learning_rate: unknown key"),
    ("empty-choices", changed(space={"batch_size": []}), [], "space.batch_size.choices: must be a non-empty list"),
    ("low-above-high", changed(space={"lr": {"low": 0.5, "high": 0.1}}), [], "space.lr.low: must be <= high"),
    ("log-low-zero", changed(space={"weight_decay": {"low": 0.0, "high": 0.1, "log": True}}), [],
     "space.weight_decay.low: must be > 0 when log is true"),
    ("step-not-positive", changed(space={"weight_decay": {"low": 0.0, "high": 0.1, "step": 0}}), [],
     "space.weight_decay.step: must be a number > 0"),
    ("wrong-type", changed(train={"epochs": "ten"}), [], "train.epochs: must be an integer >= 1"),
    ("batch-size-zero", changed(train={"batch_size": 0}), [], "train.batch_size: must be an integer >= 1"),
    ("condition-unknown", changed(space={"gamma": {"low": 0.1, "high": 0.5, "when": {"schedul": "step"}}}),
     [], "space.gamma.when.schedul: not a searched parameter"),
    ("fixed-and-searched", raw("study: s\ndata: {builtin: digits}\nmodel: {name: test_resnet}\n"
                               "train: {lr: 0.1}\nspace: {lr: [0.1, 0.2]}\n"),
     [], "space.lr: fixed at train.lr and searched here"),
    ("unknown-operation", changed(augment_policies={"mine": ["Rotate", "Twirl"]}), [],
     "augment_policies.mine[1]: unknown operation 'Twirl'"),
    ("nested-policy-list", changed(augment_policies={"mine": [["Rotate", "Solarize"]]}), [],
     "augment_policies.mine[0]: unknown operation ['Rotate', 'Solarize']"),
    ("unknown-policy", changed(space={"augment": ["flip_crop", "strong"]}), [],
     "space.augment.choices[1]: unknown augmentation policy 'strong'"),
    ("milestones-not-increasing", changed(train={"schedule": "step", "milestones": [3, 2]}), [],
     "train.milestones: must be a list of increasing positive epoch numbers"),
    ("milestones-beyond-epochs", changed(train={"epochs": 5, "schedule": "step", "milestones": [2, 8]}), [],
     "train.milestones: milestone 8 is not before the last epoch (epochs: 5)"),
    ("unknown-model", changed(model={"name": "resnet51"}), [], "model.name: unknown timm model 'resnet51'; close matches"),
    ("unknown-sampler", changed(search={"sampler": "bayes"}), [], "search.sampler.name: unknown 'bayes'; valid names: tpe"),
    ("unknown-pruner", changed(search={"pruner": "early"}), [], "search.pruner.name: unknown 'early'"),
    ("unknown-sampler-option", changed(search={"sampler": {"name": "tpe", "n_startup": 3}}), [],
     "search.sampler.n_startup: not an option of tpe"),
    ("grid-without-step", changed(search={"sampler": "grid"}), [], "space.lr: the grid sampler needs a step"),
    ("unknown-objective", changed(search={"objective": "accuracy"}), [], "search.objective: unknown 'accuracy'"),
    ("enqueue-outside", changed(enqueue=[{"lr": 3.0}]), [], "enqueue[0].lr: 3.0 is outside the space"),
    ("warmup-without-length", changed(train={"warmup": "linear"}), [], "train.warmup: a warmup needs a length"),
    ("ema-decay-one", changed(train={"ema": {"decay": 1.0}}), [],
     "train.ema.decay: must be 0 (no EMA) or a number between 0 and 1, e.g. 0.9998; got 1.0"),
    ("mix-prob-above-one", changed(train={"batch_augment": {"cutmix_alpha": 1.0, "prob": 2}}), [],
     "train.batch_augment.prob: must be a number >= 0 and <= 1, got 2"),
    ("drop-path-negative", changed(model={"name": "test_resnet", "drop_path_rate": -0.1}), [],
     "model.drop_path_rate: must be a number >= 0 and <= 1, got -0.1"),
    ("logging-typo", changed(logging={"tensorbord": True}), [], "logging.tensorbord: unknown key"),
    ("bad-study-name", changed(study="../../etc"), [], "study: must be 1-128 letters"),
    ("missing-checkpoint", changed(model={"name": "test_resnet", "pretrained": "nowhere.pth"}), [],
     "model.pretrained: checkpoint 'nowhere.pth' not found"),
    ("missing-data", changed(), ["--data", "no/such/folder"], "no/such/folder not found; pass --data"),
    ("empty-data", empty_folder, [], "no images found for train"),
    ("class-mismatch", mismatched_classes, [], "only in train: class_1; only in val: class_7"),
    ("unreadable-image", broken_image, [], "cannot read image"),
    ("test-class-train-lacks", extra_class_in_test, [], "has classes that train lacks: class_2"),
    ("empty-test-folder", empty_test_folder, [], "no images found in the test split"),
    ("test-folder-missing", changed(data={"test": "no/such/test"}), [], "data.test: test folder 'no/such/test' not found"),
    ("fractions-leave-no-train", changed(data={"val_fraction": 0.5, "test_fraction": 0.5}), [],
     "data.test_fraction: val_fraction 0.5 + test_fraction 0.5 leave no training images"),
    ("test-fraction-negative", changed(data={"test_fraction": -0.1}), [], "data.test_fraction: must be a number"),
    ("eval-every-odd", changed(train={"eval_every": 0.3}), [], "train.eval_every: must be 1 (once an epoch) or 1/k"),
    ("huge-image", huge_image, [], "huge.png is 13000x13000 = 169,000,000 pixels, above the cap of 64,000,000"),
    ("bad-gpus", changed(), ["--gpus", "first"], "--gpus: must be GPU numbers"),
    ("absent-gpu", changed(), ["--gpus", "0"], "--gpus: torch 2.14.1"),
    ("storage-folder-missing", changed(), ["--storage", "sqlite:///no/such/dir/s.db"],
     "folder no/such/dir does not exist"),
    ("storage-url-garbage", changed(), ["--storage", "nonsense://x"], "storage URL nonsense://x is not valid"),
]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _check(result, expected, db, before):
    assert result.exit_code == 2, result.output
    assert expected in result.output
    assert result.output.count("Error:") == 1
    assert "Traceback" not in result.output
    assert _digest(db) == before


@pytest.mark.parametrize("case, make, args, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_run_input(colour_folder, tmp_path, monkeypatch, case, make, args, expected):
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "studies.db"
    optuna.create_study(study_name="existing", storage=f"sqlite:///{db}")
    before = _digest(db)
    space = tmp_path / "space.yaml"
    text = make(colour_folder)
    space.write_bytes(text if isinstance(text, bytes) else text.encode())
    _check(runner.invoke(app, ["run", "--space", str(space), *args]), expected, db, before)


@pytest.mark.parametrize("command, expected", [
    (["report", "--study", "ghost"], "study 'ghost' not found in the store; studies there: existing"),
    (["best", "--study", "ghost"], "study 'ghost' not found"),
    (["trials", "--study", "ghost"], "study 'ghost' not found"),
    (["show", "--study", "existing", "--trial", "3"], "has no trial 3"),
    (["best", "--study", "existing", "--export", "x.py"], "no completed trial"),
    (["best", "--study", "existing", "--export", "x.py", "--format", "docx"], "--format: unknown 'docx'"),
    (["best", "--study", "existing", "--by", "median"], "--by: unknown 'median'; valid: mean, first"),
    (["ensemble", "--study", "existing", "--method", "max"], "--method: unknown 'max'"),
    (["ensemble", "--study", "existing"], "has 0 completed trial(s) trained by sweeper; --top 3 needs 3"),
    (["predict", "--study", "existing", "--images", "nowhere"], "--images nowhere is not a folder"),
    (["recheck", "--study", "existing"], "has no completed trial to re-check"),
    (["recheck", "--study", "existing", "--gpus", "1"], "--gpus: torch 2.14.1"),
    (["ensemble", "--study", "existing", "--gpus", "0"], "--gpus: torch 2.14.1"),
    (["predict", "--study", "existing", "--images", ".", "--gpus", "GPU-8932f937"], "--gpus: torch 2.14.1"),
    (["run", "--space", "missing.yaml"], "missing.yaml: file not found"),
])
def test_bad_study_commands(tmp_path, monkeypatch, command, expected):
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "studies.db"
    optuna.create_study(study_name="existing", storage=f"sqlite:///{db}")
    before = _digest(db)
    _check(runner.invoke(app, command), expected, db, before)


def test_report_without_any_store_does_not_create_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["report", "--study", "x"])
    assert result.exit_code == 2 and "studies.db does not exist" in result.output
    assert not (tmp_path / "studies.db").exists()


def test_a_file_that_is_not_utf8_is_named_with_the_offset_of_its_first_bad_byte(colour_folder, tmp_path):
    space = tmp_path / "space.yaml"
    text = latin1(colour_folder)
    space.write_bytes(text)
    result = runner.invoke(app, ["run", "--space", str(space)])
    offset = text.index(b"\xe9")
    assert result.exit_code == 2
    assert f"{space}: byte {offset}: not UTF-8 text (byte 0xe9)" in result.output


@pytest.mark.parametrize("value", ["x" * 100_000, list(range(100_000)), {"a": {"b": {"c": {"d": [1] * 1000}}}}])
def test_messages_quote_a_huge_value_through_a_length_limit(tmp_path, monkeypatch, value):
    monkeypatch.chdir(tmp_path)
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(tiny_space(None, train={"precision": value})))
    result = runner.invoke(app, ["run", "--space", str(space)])
    assert result.exit_code == 2 and "train.precision: must be one of" in result.output
    assert len(result.output) < 400, len(result.output)


def test_aliases_that_would_expand_inside_a_message_are_refused(tmp_path, monkeypatch):
    """Six levels: a million strings, which today's message quoted in full."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "space.yaml").write_text(laughs(6))
    result = runner.invoke(app, ["run", "--space", "space.yaml"])
    assert result.exit_code == 2 and "anchors and aliases (&name, *name) are not accepted" in result.output
    assert len(result.output) < 400 and not (tmp_path / "studies.db").exists()


def test_recheck_refuses_aliases_in_the_space_file_a_study_stored(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(tiny_space(None, study="stored")))
    (tmp_path / "runs.csv").write_text("lr,val_acc\n0.05,0.5\n")
    imported = runner.invoke(app, ["import", "--study", "stored", "--space", str(space), "--from", "runs.csv"])
    assert imported.exit_code == 0, imported.output
    study = optuna.load_study(study_name="stored", storage="sqlite:///studies.db")
    study.set_user_attr("space_yaml", laughs(9))  # as a writer to the study could leave it
    result = runner.invoke(app, ["recheck", "--study", "stored", "--top", "1", "--seeds", "1"])
    assert result.exit_code == 2, result.output
    assert f"Error: {space}: line 4, column 5: invalid YAML: anchors and aliases" in result.output
    assert "Traceback" not in result.output
