"""Every path a command writes and every study store, checked before any work: a path that cannot
be written is exit 2, one `Error:` line naming the option, no traceback, the study store
byte-for-byte unchanged and nothing else written."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sweeper.cli import app
from sweeper.testing import make_study, tiny_space, write_space

runner = CliRunner()

# (bad value, expected in the message): a file where a folder should be, a folder where a file
# should be, a location nobody can write in (even root: /proc takes no new files)
FILES = [("afile/x.{ext}", "afile is a file, not a folder"), ("adir", "adir is a folder"),
         ("/proc/x.{ext}", "cannot create files in /proc")]
FOLDERS = [("afile", "afile is a file, not a folder"), ("afile/sub", "afile is a file, not a folder"),
           ("/proc/sub", "cannot create files in /proc")]
READ_STORES = [("sqlite:///adir", "adir is a folder"), ("sqlite:///afile/s.db", "afile is a file, not a folder"),
               ("sqlite:///nodir/s.db", "folder nodir does not exist"), ("nonsense://x", "is not valid")]
WRITE_STORES = READ_STORES + [("sqlite:////proc/s.db", "cannot create files in /proc")]

RUN = ["run", "--space", "space.yaml"]
RECHECK = ["recheck", "--study", "s"]
IMPORT = ["import", "--study", "s", "--space", "space.yaml", "--from", "runs.csv"]
PREDICT = ["predict", "--study", "s", "--images", "adir"]
COMMANDS = [  # command, option, bad values, file suffix
    (RUN, "--trials-dir", FOLDERS, ""), (RUN + ["--dry-run"], "--trials-dir", FOLDERS[:1], ""),
    (RUN, "--storage", WRITE_STORES, ""),
    (RECHECK, "--trials-dir", FOLDERS, ""), (RECHECK, "--storage", WRITE_STORES, ""),
    (IMPORT, "--storage", WRITE_STORES, ""),
    (["report", "--study", "s"], "--out", FILES, "html"), (["report", "--study", "s"], "--storage", READ_STORES, ""),
    (["best", "--study", "s"], "--export", FILES[::2], "py"),  # an existing folder is fine there
    (["best", "--study", "s"], "--export", [("afile/", "afile is a file"), ("/proc/sub/", "cannot create files in /proc")], ""),
    (["best", "--study", "s"], "--storage", READ_STORES, ""),
    (["ensemble", "--study", "s"], "--trials-dir", FOLDERS, ""), (["ensemble", "--study", "s"], "--storage", READ_STORES, ""),
    (PREDICT, "--out", FILES, "csv"), (PREDICT, "--storage", READ_STORES, ""),
    (["studies"], "--storage", READ_STORES, ""), (["trials", "--study", "s"], "--storage", READ_STORES, ""),
    (["show", "--study", "s", "--trial", "0"], "--storage", READ_STORES, ""),
    (["data", "inspect", "--builtin", "digits"], "--out", FILES, "html"),
    (["cache", "clean"], "--trials-dir", FOLDERS, ""),
]
CASES = [(command, option, bad.format(ext=ext), expected)
         for command, option, bads, ext in COMMANDS for bad, expected in bads]


def _name(command: list[str]) -> str:
    words = command[:2] if command[0] in ("data", "cache") else command[:1]
    return " ".join(words + [w for w in command if w == "--dry-run"])


def _state(root: Path) -> dict[str, tuple[int, str]]:
    """Every file under root with its mtime and content digest."""
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    db = tmp_path_factory.mktemp("store") / "studies.db"
    make_study(f"sqlite:///{db}", "s", complete=3)
    return db


@pytest.fixture
def here(tmp_path, monkeypatch, store):
    """A folder with a study of 3 completed trials (written straight into the store), a space
    file, a CSV to import, a file `afile` and an empty folder `adir`."""
    monkeypatch.chdir(tmp_path)
    shutil.copy(store, tmp_path / "studies.db")
    write_space(tmp_path / "space.yaml", tiny_space(study="s"))
    (tmp_path / "runs.csv").write_text("lr,val_acc\n0.02,0.5\n")
    (tmp_path / "afile").write_text("a file, not a folder")
    (tmp_path / "adir").mkdir()
    return tmp_path


def _check_refused(result, option: str, expected: str, root: Path, before: dict) -> None:
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert result.exit_code == 2, result.output
    assert len(errors) == 1 and result.output.count("Error:") == 1, result.output
    assert errors[0].startswith(f"Error: {option}: ") or (option == "--storage" and option in errors[0])
    assert expected in errors[0]
    assert "Traceback" not in result.output
    assert _state(root) == before  # the store untouched, nothing written (no trials/, no lock file)


@pytest.mark.parametrize("command, option, bad, expected", CASES,
                         ids=[f"{_name(c[0])} {c[1]} {c[2]}" for c in CASES])
def test_a_path_that_cannot_be_written_is_refused_before_any_work(here, command, option, bad, expected):
    if bad.startswith("/proc") and not Path("/proc/self").is_dir():
        pytest.skip("no /proc on this machine")
    before = _state(here)
    _check_refused(runner.invoke(app, [*command, option, bad]), option, expected, here, before)


@pytest.mark.parametrize("command", [["report", "--study", "s"], ["data", "inspect", "--builtin", "digits"],
                                     RUN, ["ensemble", "--study", "s"], ["cache", "clean"]], ids=_name)
def test_the_default_trials_folder_is_checked_too(here, command):
    (here / "trials").write_text("a file where the default trials/ folder goes")
    before = _state(here)
    option = "--out" if command[0] in ("report", "data") else "--trials-dir"
    _check_refused(runner.invoke(app, command), option, "trials is a file, not a folder", here, before)


@pytest.mark.parametrize("command", [["predict", "--study", "s", "--images", "adir", "--out"],
                                     ["best", "--study", "s", "--export"],
                                     ["report", "--study", "s", "--out"]], ids=lambda c: c[0])
def test_an_existing_file_that_cannot_be_replaced_is_refused(here, command):
    locked = Path("/sys/kernel/uevent_seqnum")  # read-only even for root
    try:
        os.close(os.open(locked, os.O_WRONLY))
        pytest.skip(f"{locked} is missing or writable here")
    except OSError:
        pass
    if not locked.is_file():
        pytest.skip(f"no {locked} here")
    before = _state(here)
    _check_refused(runner.invoke(app, [*command, str(locked)]), command[-1], "exists and cannot be replaced",
                   here, before)


def test_run_with_a_bad_trials_dir_creates_no_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_space(tmp_path / "space.yaml", tiny_space())
    (tmp_path / "afile").write_text("x")
    result = runner.invoke(app, [*RUN, "--trials-dir", "afile/trials"])
    assert result.exit_code == 2 and "Error: --trials-dir: afile is a file, not a folder" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "space.yaml"]


def test_missing_folders_of_an_output_file_are_still_created(here):
    result = runner.invoke(app, ["report", "--study", "s", "--out", "new/sub/r.html"])
    assert result.exit_code == 0, result.output
    assert (here / "new" / "sub" / "r.html").is_file() and (here / "new" / "sub" / "trials.csv").is_file()

