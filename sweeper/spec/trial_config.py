"""The fully resolved configuration of one trial: what the worker trains, and what is saved."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sweeper.errors import StorageError
from sweeper.spec.knobs import BY_NAME, KNOBS
from sweeper.spec.presets import PRESETS, default_milestones, expand_preset

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # a timm model, a built-in dataset, an objective
# fields that say where a trial runs, not what it trains (left out of its fingerprint)
PLACE = ("study", "number", "trial_dir", "data_root", "data_test", "data_cache", "resume_from", "resume_trial",
         "artifacts", "artifact_key", "logging", "decide_at")


@dataclass(frozen=True)
class TrialConfig:
    study: str
    number: int
    trial_dir: str
    params: dict[str, Any]  # the searched values, as sampled
    # data
    data_root: str | None
    data_builtin: str | None
    val_fraction: float
    num_workers: int | str  # or auto (data/loading.py)
    data_cache: str  # the decoded dataset prepared by the orchestrator
    # knobs (see knobs.py)
    image_size: int
    model: str
    pretrained: bool | str
    frozen_stages: int
    backbone_lr_mult: float
    epochs: int
    batch_size: int
    lr: float
    lr_scaling: str
    base_batch_size: int
    optimizer: str
    momentum: float
    nesterov: bool
    weight_decay: float
    schedule: str
    milestones: list[int]
    gamma: float
    min_lr: float
    warmup: str
    warmup_iters: int
    warmup_epochs: int
    warmup_ratio: float
    augment: str
    num_ops: int
    magnitude: float
    magnitude_std: float
    label_smoothing: float
    seed: int
    precision: str
    # resolved from the spec
    augment_ops: list[str] | None  # None: no augmentation; []: crop and flip only
    # knobs added later, defaulting to what configs saved before them trained with
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix_prob: float = 1.0
    mix_switch_prob: float = 0.5
    drop_path_rate: float = 0.0
    ema_decay: float = 0.0
    objective: str = "val_acc"
    value: str = "last"  # the value told to the study: the last epoch's or the best epoch's
    mean: tuple[float, ...] = IMAGENET_MEAN  # input normalisation, from timm's pretrained config
    std: tuple[float, ...] = IMAGENET_STD
    schedule_preset: str | None = None  # 1x/2x/20e, expanded into schedule/milestones/warmup
    resume_from: str | None = None  # an earlier attempt's resume.pt (or artifact:<id>): train on after its last epoch
    resume_trial: int | None = None  # the trial that wrote that state (train/resume.py checks it)
    artifacts: str | None = None  # the artifact store every file is uploaded to (artifacts.py)
    artifact_key: str | None = None  # this trial's files there are <key>-<filename>
    logging: tuple[str, ...] = ()  # trackers the worker writes to (spec/tracking.py); a list once read from JSON
    eval_every: float = 1.0  # validate every this many epochs (1/k: k times an epoch)
    test_fraction: float = 0.0  # the data's test split (data/datasets.py Source)
    data_test: str | None = None
    record_test: bool = False  # score the test split at every validation: for recorded curves only
    decide_at: tuple[float, ...] = ()  # part-epoch rungs (0.5): validate there, ask the orchestrator; a list from JSON

    @property
    def mixes(self) -> bool:
        """Whether training batches are mixed (Mixup / CutMix): targets are soft then."""
        return self.mix_prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)

    @property
    def scaled_lr(self) -> float:
        """The lr actually used: `lr` scaled from base_batch_size to batch_size."""
        ratio = self.batch_size / self.base_batch_size
        return self.lr * {"linear": ratio, "sqrt": ratio**0.5, "none": 1.0}[self.lr_scaling]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    def training_fingerprint(self) -> str:
        """A hash of what determines training (knobs, sampled values, data split, policies), not
        of where it runs: a resume state is used only by a configuration with the same one."""
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k not in PLACE}
        if isinstance(self.pretrained, str):  # a path: the same file may be elsewhere on another machine
            fields["pretrained"] = Path(self.pretrained).name
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def from_json(cls, text: str) -> "TrialConfig":
        """A config.json read back (from a trials folder or an artifact store, which others can
        write): every field of the right type and every knob valid, or a StorageError."""
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise StorageError(f"a trial's config.json is not JSON ({exc})") from None
        if not isinstance(raw, dict):
            raise StorageError("a trial's config.json is not a JSON object")
        if problems := _problems(raw):
            where = f"trial {raw.get('number')!r}'s config.json" if "number" in raw else "a trial's config.json"
            shown = "; ".join(p if len(p) < 200 else p[:200] + "..." for p in problems[:3])
            raise StorageError(f"{where}: {shown}; it was altered or is not sweeper's "
                               "(a config.json of this sweeper version's run is needed)")
        return cls(**raw)

    def save(self) -> Path:
        path = Path(self.trial_dir) / "config.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json())
        return path


def _optional(check):
    return lambda v: v is None or check(v)


def _strings(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _numbers(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _name(v: Any) -> bool:
    return isinstance(v, str) and bool(NAME.fullmatch(v))


_FIELDS = {  # fields knobs.py does not check (or checks as the YAML gives them, not as resolved)
    "study": lambda v: isinstance(v, str), "number": _int, "trial_dir": lambda v: isinstance(v, str),
    "params": lambda v: isinstance(v, dict), "data_root": _optional(lambda v: isinstance(v, str)),
    "data_builtin": _optional(_name),
    "val_fraction": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1,
    "num_workers": lambda v: v == "auto" or _int(v), "data_cache": lambda v: isinstance(v, str),
    "augment_ops": _optional(_strings), "objective": _name, "value": lambda v: v in ("last", "best"),
    "mean": _numbers, "std": _numbers, "schedule_preset": _optional(lambda v: v in PRESETS),
    "resume_from": _optional(lambda v: isinstance(v, str)), "resume_trial": _optional(_int),
    "artifacts": _optional(lambda v: isinstance(v, str)),
    "artifact_key": _optional(lambda v: isinstance(v, str) and bool(re.fullmatch(r"[0-9a-f]+", v))),
    "logging": _strings,
    "test_fraction": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1,
    "data_test": _optional(lambda v: isinstance(v, str)), "record_test": lambda v: isinstance(v, bool),
    "decide_at": lambda v: _numbers(v) and all(0 < x and x != int(x) for x in v),
    # resolved for the run's length: none for a short run, repeated by a preset (presets.py)
    "milestones": lambda v: isinstance(v, list) and all(_int(m) and m > 0 for m in v),
}


def _problems(raw: dict[str, Any]) -> list[str]:
    known = {f.name for f in dataclasses.fields(TrialConfig)}
    required = {f.name for f in dataclasses.fields(TrialConfig)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    problems = [f"unknown key {k!r}" for k in raw if k not in known]
    problems += [f"{k} is missing" for k in sorted(required - raw.keys())]
    for key, value in raw.items():
        if key in BY_NAME and key not in _FIELDS:
            if (message := BY_NAME[key].check(value)) is not None:
                problems.append(f"{key} {message}")
            elif key == "model" and not _name(value):  # timm's names; it goes into file names
                problems.append(f"{key} must be a name of letters, digits, _ . - ; got {value!r}")
        elif key in _FIELDS and not _FIELDS[key](value):
            problems.append(f"{key} has an invalid value {value!r}")
    return problems


def resolve(spec, number: int, sampled: dict[str, Any], trials_root: Path, data_cache: Path) -> TrialConfig:
    """Spec defaults + sampled values -> TrialConfig for trial `number`."""
    knobs = {**spec.fixed, **sampled}
    missing = [k.name for k in KNOBS if k.name not in knobs]
    assert not missing, f"unresolved knobs {missing}"  # a bug, not a user error

    if knobs["milestones"] is None:  # not written: mmcls's recipe at this trial's length
        knobs["milestones"] = default_milestones(knobs["epochs"])
    preset = knobs["schedule"] if knobs["schedule"] in PRESETS else None
    knobs = expand_preset(knobs)

    ops = spec.policies[knobs["augment"]]
    mean, std = normalization(knobs["model"])
    if isinstance(knobs["pretrained"], str):  # absolute, so the file is found from any folder
        knobs["pretrained"] = str(Path(knobs["pretrained"]).expanduser().resolve())
    return TrialConfig(
        study=spec.study,
        number=number,
        trial_dir=str((trials_root / spec.study / str(number)).resolve()),
        params=dict(sampled),
        data_root=str(spec.data.root) if spec.data.root else None,
        data_builtin=spec.data.builtin,
        val_fraction=spec.data.val_fraction,
        test_fraction=spec.data.test_fraction,
        data_test=str(spec.data.test) if spec.data.test else None,
        num_workers=spec.data.num_workers,
        data_cache=str(data_cache),
        augment_ops=list(ops) if ops is not None else None,
        objective=spec.search.objective,
        value=spec.search.value,
        mean=mean,
        std=std,
        schedule_preset=preset,
        **{k.name: knobs[k.name] for k in KNOBS},
    )


def normalization(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean and std the model's timm pretrained config asks for (ImageNet's if it has none)."""
    from sweeper.spec import timm_catalog  # only the orchestrator resolves configs

    return timm_catalog.normalization(name) or (IMAGENET_MEAN, IMAGENET_STD)
