"""The orchestrator of a CPU sweep never imports torch, torchvision or timm (about 3 s and
400 MB each `sweeper run`): its workers do, in the fork server. What it needs of timm comes from
a catalog read from timm once per timm version (spec/timm_catalog.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import optuna
import pytest
import timm

from sweeper.errors import SpecError
from sweeper.spec import timm_catalog
from sweeper.spec.sweep_spec import parse_spec
from sweeper.testing import tiny_space, write_space

BLOCKED = textwrap.dedent("""
    import sys
    for name in ("torch", "torchvision", "timm"):
        sys.modules[name] = None  # importing it here fails
    from sweeper.cli import app
    app(["run", "--space", "space.yaml"])
""")


@pytest.mark.parametrize("precision", ["fp32", "auto"])  # auto: the CPU's bf16 is checked first
def test_a_cpu_sweep_runs_with_torch_unimportable_in_the_orchestrator(colour_folder, tmp_path, monkeypatch,
                                                                       precision):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    timm_catalog.forget()
    timm_catalog.catalog()  # the catalog is on this machine (the first sweep here writes it)
    write_space(tmp_path / "space.yaml", tiny_space(colour_folder, study="light",
                                                    train={"epochs": 1, "precision": precision}))
    done = subprocess.run([sys.executable, "-c", BLOCKED], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    trials = optuna.load_study(study_name="light", storage=f"sqlite:///{tmp_path / 'studies.db'}").get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]


def test_the_catalog_says_what_timm_says_and_a_damaged_one_is_read_again(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    timm_catalog.forget()
    assert timm_catalog.model_names() == timm.list_models()
    for name in ("vit_base_patch16_224", "convnext_tiny.fb_in22k", "resnet18", "resnet50.a1_in1k",
                 "vit_large_patch14_224.untrained"):  # a tag without downloadable weights
        cfg = timm.models.get_pretrained_cfg(name, allow_unregistered=True)
        assert timm_catalog.normalization(name) == (tuple(cfg.mean), tuple(cfg.std)), name
    assert timm_catalog.normalization("no_such_model") is None
    (written,) = (tmp_path / "sweeper").glob("timm-*.json")
    assert json.loads(written.read_text())["names"] == timm.list_models()
    written.write_text('{"names": ["resnet18"')  # cut short
    timm_catalog.forget()
    assert timm_catalog.model_names() == timm.list_models()
    timm_catalog.forget()


@pytest.mark.parametrize("name, said", [
    ("resnet18.no_such_tag", "unknown pretrained tag 'resnet18.no_such_tag'"),
    ("resnet181", "unknown timm model 'resnet181'; close matches: resnet18"),
])
def test_a_mistyped_model_or_tag_is_refused_by_name(colour_folder, tmp_path, monkeypatch, name, said):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    timm_catalog.forget()
    with pytest.raises(SpecError) as refused:
        parse_spec(tiny_space(colour_folder, model={"name": name, "pretrained": False}))
    assert said in str(refused.value)
    timm_catalog.forget()
