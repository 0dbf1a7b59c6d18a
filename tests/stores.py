"""Artifact stores for tests: a folder, or a bucket on a real S3-compatible server (moto's
standalone server: `.ci/run` starts one and sets SWEEPER_TEST_S3_ENDPOINT; elsewhere the tests
start their own). sweeper reaches it only through boto3, with an endpoint URL."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from sweeper.testing import start_s3_server

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "sweeper-test-key", "AWS_SECRET_ACCESS_KEY": "sweeper-test-secret",
               "AWS_DEFAULT_REGION": "us-east-1"}
_server: list = []


def s3_endpoint() -> str:
    if url := os.environ.get("SWEEPER_TEST_S3_ENDPOINT"):
        return url
    if not _server:
        _server.append(start_s3_server())
    return _server[0][1]


def stop_server() -> None:
    for proc, _ in _server:
        proc.terminate()
    _server.clear()


def make(kind: str, tmp_path: Path, monkeypatch) -> str:
    """A fresh, empty store of `kind` (folder | s3); its URL."""
    if kind == "folder":
        folder = tmp_path / "artifact-store"
        folder.mkdir()
        return str(folder)
    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint())
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    bucket = f"sweeper-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    return f"s3://{bucket}/team/studies"


def listing(url: str) -> set[str]:
    """Every artifact id the store holds (what a user sees with `ls` or `aws s3 ls`)."""
    if not url.startswith("s3://"):
        return {p.name for p in Path(url).iterdir()}
    import boto3

    bucket, _, prefix = url[len("s3://"):].partition("/")
    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
    return {o["Key"][len(prefix) + 1:] for page in pages for o in page.get("Contents", [])}
