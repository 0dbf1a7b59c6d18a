"""Where trials' curves go besides the study store: TensorBoard and MLflow, both opt-in
(`logging: {tensorboard: true, mlflow: true}` in the space file, or `--log tensorboard,mlflow`)."""

from __future__ import annotations

import importlib
from typing import Any

from sweeper.errors import SpecError, quoted
from sweeper.spec.space_yaml import did_you_mean

# name -> (the module its writer imports, the pip extra that installs it)
TRACKERS = {"tensorboard": ("torch.utils.tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow")}


def parse_section(raw: Any, problems: list[tuple[str, str]]) -> tuple[str, ...]:
    """The space file's `logging:` mapping -> the trackers switched on."""
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        problems.append(("logging", "must be a mapping, e.g. {tensorboard: true, mlflow: true}"))
        return ()
    chosen = []
    for key, on in raw.items():
        if key not in TRACKERS:
            problems.append((f"logging.{key}", did_you_mean(str(key), list(TRACKERS))))
        elif not isinstance(on, bool):
            problems.append((f"logging.{key}", f"must be true or false, got {quoted(on)}"))
        elif on:
            chosen.append(key)
    return tuple(chosen)


def parse_option(text: str) -> tuple[str, ...]:
    """`--log tensorboard,mlflow` (or `none`) -> the trackers switched on."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in (*TRACKERS, "none")]
    if unknown or not names:
        raise SpecError("--log", [("", f"unknown {', '.join(map(repr, unknown)) or repr(text)}; "
                                       f"valid: {', '.join(TRACKERS)} (comma-separated), or none")])
    return tuple(n for n in TRACKERS if n in names)


def choose(option: str | None, from_file: tuple[str, ...], source: str) -> tuple[str, ...]:
    """`--log` if given (it replaces the file's `logging:`), else the file's; checked to import."""
    chosen = parse_option(option) if option is not None else from_file
    require_installed(chosen, source, option is not None)
    return chosen


def require_installed(chosen: tuple[str, ...], source: str, from_option: bool) -> None:
    """Each chosen tracker's package imports, or one message naming the extra to install."""
    problems = []
    for name in chosen:
        module, extra = TRACKERS[name]
        try:
            importlib.import_module(module)
        except ImportError as exc:
            problems.append(("" if from_option else f"logging.{name}",
                             f"{name} logging needs a package that does not import here ({exc}); "
                             f"pip install 'sweeper[{extra}]'"))
    if problems:
        raise SpecError("--log" if from_option else source, problems)
