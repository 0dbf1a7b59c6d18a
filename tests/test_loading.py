"""A trial's loaders: how many loader processes `num_workers: auto` gives, per device."""

from __future__ import annotations

import os

import pytest
import torch

from sweeper.loading import HOST_WORKERS_ENV, MAX_AUTO_WORKERS, loader_workers


def test_auto_on_a_cpu_trains_in_the_worker_and_a_number_is_kept():
    assert loader_workers("auto", torch.device("cpu")) == 0
    assert loader_workers(3, torch.device("cpu")) == 3
    assert loader_workers(0, torch.device("cuda")) == 0


@pytest.mark.parametrize("host_workers", [1, 2, 64])
def test_auto_on_a_gpu_divides_the_hosts_cores_among_its_workers(monkeypatch, host_workers):
    monkeypatch.setenv(HOST_WORKERS_ENV, str(host_workers))
    cores = len(os.sched_getaffinity(0))
    expected = max(1, min(MAX_AUTO_WORKERS, cores // host_workers))
    assert loader_workers("auto", torch.device("cuda")) == expected
