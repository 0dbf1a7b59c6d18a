"""Commands about images: `data inspect` a dataset before sweeping, `cache list|clean` the
decoded caches."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from sweeper.cli.common import (
    JsonOpt,
    TrialsDirOpt,
    check_choice,
    print_json,
    progress_bar,
    user_errors,
)
from sweeper.cli.paths import check_output_dir, check_output_file
from sweeper.errors import SpecError

app = typer.Typer()
data_app = typer.Typer(no_args_is_help=True, help="Look at a dataset before sweeping on it.")
app.add_typer(data_app, name="data")
cache_app = typer.Typer(no_args_is_help=True, help="The decoded-image caches under <trials-dir>/.cache.")
app.add_typer(cache_app, name="cache")


@data_app.command("inspect")
@user_errors
def data_inspect(
    path: Annotated[Optional[Path], typer.Argument(help="Image folder: train/<class>/ and val/<class>/, or <class>/.")] = None,
    builtin: Annotated[Optional[str], typer.Option(help="A built-in dataset instead: digits.")] = None,
    val_fraction: Annotated[float, typer.Option(help="Validation share when the folder has no val/ (as in the space's data.val_fraction).")] = 0.2,
    test_fraction: Annotated[float, typer.Option(help="Test share split off when there is no test/ (as in data.test_fraction).")] = 0.0,
    test: Annotated[Optional[Path], typer.Option(help="A test folder of <class>/ folders elsewhere (as in data.test).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="HTML page (default trials/inspect/<name>.html).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Images per class and split, imbalance, sizes, modes, duplicates and unreadable files."""
    from sweeper.data import inspection
    from sweeper.spec.data_spec import BUILTIN_DATASETS

    if (path is None) == (builtin is None):
        raise SpecError("data inspect", [("", "give an image folder PATH or --builtin digits (one of them)")])
    if not 0 < val_fraction < 1:
        raise SpecError("--val-fraction", [("", f"must be between 0 and 1, got {val_fraction}")])
    if not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise SpecError("--test-fraction", [("", f"must be from 0 to below 1 - val_fraction, got {test_fraction}")])
    if path is not None and not path.is_dir():
        raise SpecError(str(path), [("", "is not a folder; give the image folder (train/<class>/ and "
                                         "val/<class>/, or <class>/ folders)")])
    if out is not None:
        check_output_file("--out", out)
    else:  # the default, trials/inspect/<dataset>.html
        check_output_dir("--out", Path("trials") / "inspect")
    if builtin is not None:
        check_choice("--builtin", builtin, BUILTIN_DATASETS)
        result = inspection.inspect_builtin(builtin, val_fraction, test_fraction)
    else:
        with progress_bar("reading image headers") as callback:
            result = inspection.inspect_folder(path, val_fraction, callback, test_fraction,
                                               str(test) if test else None)
    target = out or Path("trials") / "inspect" / f"{result.name}.html"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(inspection.html_report(result), encoding="utf-8")
    if as_json:
        print_json({**result.to_json(), "html": str(target)})
        return
    print(inspection.text_report(result))
    print(f"html: {target}")


def _mb(size: int) -> str:
    return f"{size / 2**20:.1f} MB"


@cache_app.command("list")
@user_errors
def cache_list(trials_dir: TrialsDirOpt = Path("trials"), as_json: JsonOpt = False) -> None:
    """Every cache: its dataset, images, size on disk, and whether a sweep would still use it."""
    from sweeper.data import caches

    found = caches.entries(trials_dir / ".cache")
    if as_json:
        print_json([e.to_json() for e in found])
        return
    if not found:
        print(f"no caches under {trials_dir / '.cache'}")
        return
    for e in found:
        images = "-" if e.images is None else str(e.images)
        why = f"  ({e.why})" if e.why else ""
        print(f"{e.state:10s}  {_mb(e.size):>10s}  {images:>7s} images  {e.path.name}  {e.dataset}{why}")
    total = sum(e.size for e in found)
    reclaim = sum(e.size for e in found if e.state != caches.CURRENT)
    print(f"{len(found)} cache(s), {_mb(total)}; `sweeper cache clean` frees {_mb(reclaim)}")


@cache_app.command("clean")
@user_errors
def cache_clean(
    trials_dir: TrialsDirOpt = Path("trials"),
    all_: Annotated[bool, typer.Option("--all", help="Remove current caches too (the next sweep decodes again).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Remove stale, broken, partial and old-format caches (with --all, every cache)."""
    from sweeper.data import caches

    check_output_dir("--trials-dir", trials_dir / ".cache")
    removed = [e for e in caches.entries(trials_dir / ".cache") if all_ or e.state != caches.CURRENT]
    for e in removed:
        caches.remove(e)
    if as_json:
        print_json({"removed": [e.to_json() for e in removed], "freed_bytes": sum(e.size for e in removed)})
        return
    for e in removed:
        print(f"removed {e.state} {e.path.name} ({_mb(e.size)})")
    print(f"freed {_mb(sum(e.size for e in removed))}")
