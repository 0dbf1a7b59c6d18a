from __future__ import annotations

import pytest

from sweeper.testing import make_image_folder


@pytest.fixture(scope="session")
def colour_folder(tmp_path_factory):
    """Three easily told classes, 20 train / 10 val images each, mixed JPEG/PNG/gray/palette."""
    return make_image_folder(tmp_path_factory.mktemp("data") / "colours", classes=3, per_class=30)


@pytest.fixture(scope="session", autouse=True)
def own_cpu_registry(tmp_path_factory):
    """The suite's workers share the cores among themselves only: a sweep the developer runs
    beside the tests must not change their thread counts (and with them, bit-exact results)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("SWEEPER_CPU_REGISTRY", str(tmp_path_factory.mktemp("cpu-registry")))
    yield
    mp.undo()
