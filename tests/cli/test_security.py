"""Credentials never shown, study names never escape trials/, checkpoints load without pickle."""

from __future__ import annotations

import optuna
import pytest
from typer.testing import CliRunner

from sweeper.cli import app
from sweeper.redaction import redact
from sweeper.testing import make_study, tiny_space, write_space

runner = CliRunner()
# password p{w%d@x: '{' as is, '%' and '@' percent-encoded as a URL needs them
BAD_PG = "postgresql://alice:p{w%25d%40x@127.0.0.1:1/sweeps"
SECRETS = ["p{w%25d%40x", "p{w%d@x", "p{w"]


def test_redact_hides_passwords_with_special_characters():
    assert redact(BAD_PG) == "postgresql://***@127.0.0.1:1/sweeps"


@pytest.mark.parametrize("text, secrets", [
    ("postgresql://u@db/x?password=SECRET1&sslmode=require", ["SECRET1"]),
    ("https://ghp_SECRET2@github.com/org/repo", ["ghp_SECRET2"]),
    ("postgresql://u:pa/SECRET3@db/x", ["SECRET3"]),
    ("GET https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIASECRET4%2F2026&X-Amz-Security-Token=SECRET5"
     "&X-Amz-Signature=SECRET6&X-Amz-Date=20261207", ["SECRET4", "SECRET5", "SECRET6"]),
    ("host=db user=u password=SECRET7 dbname=x", ["SECRET7"]),
    ("{'aws_secret_access_key': 'SECRET8', 'region_name': 'eu'}", ["SECRET8"]),
    ("Could not connect to the endpoint URL: \"http://AKUSER:SECRET9@minio:9000/b/k?Api_Key=SECRETA\"",
     ["AKUSER", "SECRET9", "SECRETA"]),
])
def test_redact_hides_userinfo_and_secret_parameters_in_any_text(text, secrets):
    shown = redact(text)
    assert "***" in shown and not any(s in shown for s in secrets)


def test_redact_keeps_ordinary_text():
    text = "KeyError: 'model' in s3://bucket/prefix at sqlite:///studies.db (key abc, X-Amz-Date=1)"
    assert redact(text) == text


def test_an_sqlalchemy_error_text_is_redacted():
    pytest.importorskip("psycopg")
    import sqlalchemy

    url = "postgresql+psycopg://u:SECRETPW@127.0.0.1:1/x?password=SECRET2&connect_timeout=2"
    with pytest.raises(sqlalchemy.exc.OperationalError) as caught:
        sqlalchemy.create_engine(url).connect()
    assert "SECRET" not in redact(str(caught.value))


def test_secret_environment_values_are_hidden_wherever_they_appear(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "hunter2-SECRET")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrSECRETKEY")
    assert redact("auth failed for hunter2-SECRET with wJalrSECRETKEY") == "auth failed for *** with ***"


@pytest.mark.parametrize("command", [
    ["report", "--study", "s"], ["best", "--study", "s"], ["studies"], ["trials", "--study", "s"],
])
def test_unreachable_store_message_never_shows_the_password(command):
    pytest.importorskip("psycopg")
    result = runner.invoke(app, [*command, "--storage", BAD_PG])
    assert result.exit_code == 2
    assert "cannot open study store postgresql://***@127.0.0.1:1/sweeps" in result.output
    assert not any(s in result.output for s in SECRETS)


def test_run_against_an_unreachable_store_never_shows_the_password(colour_folder, tmp_path, monkeypatch):
    pytest.importorskip("psycopg")
    monkeypatch.chdir(tmp_path)
    space = write_space(tmp_path / "s.yaml", tiny_space(colour_folder))
    result = runner.invoke(app, ["run", "--space", str(space), "--storage", BAD_PG])
    assert result.exit_code == 2
    assert not any(s in result.output for s in SECRETS)
    assert "***" in result.output


def test_run_with_credentials_in_the_storage_url_never_shows_them(colour_folder, tmp_path, monkeypatch):
    pytest.importorskip("psycopg")
    monkeypatch.chdir(tmp_path)
    space = write_space(tmp_path / "s.yaml", tiny_space(colour_folder))
    result = runner.invoke(app, ["run", "--space", str(space), "--storage",
                                 "postgresql://u:SECRETPW@127.0.0.1:1/x?password=SECRET2"])
    assert result.exit_code == 2 and "cannot open study store postgresql://***@127.0.0.1:1/x" in result.output
    assert "SECRET" not in result.output


def test_run_with_credentials_in_the_s3_endpoint_never_shows_them(colour_folder, tmp_path, monkeypatch):
    pytest.importorskip("boto3")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://AKUSER-SECRETPW@127.0.0.1:1")  # a token alone
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIASECRETID")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "SECRETACCESSKEY")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("SWEEPER_ARTIFACT_PATIENCE", "0.5")
    space = write_space(tmp_path / "s.yaml", tiny_space(colour_folder))
    result = runner.invoke(app, ["run", "--space", str(space), "--artifacts", "s3://bucket/sweeps"])
    assert result.exit_code == 2 and "--artifacts" in result.output
    assert "SECRET" not in result.output and "AKUSER" not in result.output


@pytest.mark.parametrize("url", ["s3://AKUSER:SECRETPW@bucket/sweeps", "s3://bucket/sweeps?token=SECRETPW"])
def test_credentials_in_the_artifacts_url_are_refused_before_they_are_stored(colour_folder, tmp_path,
                                                                             monkeypatch, url):
    pytest.importorskip("boto3")
    monkeypatch.chdir(tmp_path)
    space = write_space(tmp_path / "s.yaml", tiny_space(colour_folder))
    result = runner.invoke(app, ["run", "--space", str(space), "--artifacts", url])
    assert result.exit_code == 2 and "credentials" in result.output
    assert "SECRETPW" not in result.output and not (tmp_path / "studies.db").exists()


def test_mlflow_tracking_uri_with_userinfo_never_shows_it(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mluser:SECRETPW@127.0.0.1:1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    space = write_space(tmp_path / "s.yaml", tiny_space(
        search={"n_trials": 1}, train={"epochs": 1}, logging={"mlflow": True}))
    result = runner.invoke(app, ["run", "--space", str(space)])
    assert result.exit_code == 0, result.output
    assert "MLflow logging stopped" in result.output
    assert "SECRETPW" not in result.output and "mluser" not in result.output
    logs = [p.read_text() for p in (tmp_path / "trials").rglob("*.txt")]
    assert logs and not any("SECRETPW" in text for text in logs)


def test_a_worker_error_quoting_a_secret_is_redacted_in_its_reason_logs_and_output(tmp_path, monkeypatch):
    """The worker's own failure (a checkpoint it cannot load, whose path holds password=...)."""
    monkeypatch.chdir(tmp_path)
    weights = tmp_path / "password=SECRETPW" / "w.pth"
    weights.parent.mkdir()
    weights.write_bytes(b"not a checkpoint")
    space = write_space(tmp_path / "s.yaml", tiny_space(
        model={"name": "test_resnet", "pretrained": str(weights)}, search={"n_trials": 1}, train={"epochs": 1}))
    result = runner.invoke(app, ["run", "--space", str(space)])
    assert result.exit_code == 0, result.output
    [trial] = optuna.load_study(study_name="tiny", storage="sqlite:///studies.db").trials
    assert trial.state.name == "FAIL" and "cannot load checkpoint" in trial.user_attrs["reason"]
    assert "password=***" in trial.user_attrs["reason"] and "SECRETPW" not in trial.user_attrs["reason"]
    assert "SECRETPW" not in result.output
    logs = {p.name: p.read_text() for p in (tmp_path / "trials").rglob("*.txt")}
    assert "stderr.txt" in logs and not any("SECRETPW" in t for t in logs.values())


def test_show_and_report_hide_credentials_an_older_study_stored(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    study = make_study(f"sqlite:///{tmp_path / 'studies.db'}", "old", complete=3)
    leaked = "could not start: OperationalError: postgresql://u:SECRETPW@db/x?password=SECRET2"
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, user_attrs={"reason": leaked}))
    shown = runner.invoke(app, ["show", "--study", "old", "--trial", "3"])
    assert shown.exit_code == 0 and "postgresql://***@db/x" in shown.output and "SECRET" not in shown.output
    report = runner.invoke(app, ["report", "--study", "old", "--no-errors", "--out", str(tmp_path / "r.html")])
    assert report.exit_code == 0, report.output
    assert "SECRET" not in (tmp_path / "r.html").read_text()


@pytest.mark.parametrize("name", ["../up", "a/b", "/etc", "x" * 129, "a\x00b", ".hidden"])
def test_study_names_from_the_command_line_are_checked(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["report", "--study", name])
    assert result.exit_code == 2 and "--study" in result.output
    assert not (tmp_path / "trials").exists()


def test_checkpoints_load_with_weights_only(tmp_path):
    import torch

    from sweeper.train import model as models

    path = tmp_path / "evil.pth"
    torch.save({"state_dict": models.create("test_resnet", 3, False).state_dict(),
                "payload": object()}, path)  # an arbitrary object needs pickle
    with pytest.raises(Exception, match="cannot load checkpoint"):
        models.create("test_resnet", 3, str(path))
