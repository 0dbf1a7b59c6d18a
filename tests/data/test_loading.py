"""A trial's loaders: how many loader processes `num_workers: auto` gives, per device."""

from __future__ import annotations

import pytest
import torch

from sweeper.data.loading import MAX_AUTO_WORKERS, loader_workers


def test_auto_on_a_cpu_trains_in_the_worker_and_a_number_is_kept():
    assert loader_workers("auto", torch.device("cpu"), 16, 1) == 0
    assert loader_workers(3, torch.device("cpu"), 16, 1) == 3
    assert loader_workers(0, torch.device("cuda"), 16, 1) == 0


@pytest.mark.parametrize("cores, host_workers, expected", [
    (16, 1, MAX_AUTO_WORKERS),  # capped
    (16, 4, 4),
    (16, 3, 5),
    (2, 4, 1),  # never none on a GPU
])
def test_auto_on_a_gpu_divides_the_hosts_cores_among_its_workers(cores, host_workers, expected):
    assert loader_workers("auto", torch.device("cuda"), cores, host_workers) == expected
