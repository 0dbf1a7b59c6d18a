from __future__ import annotations

import pytest

from sweeper.testing import make_image_folder


@pytest.fixture(scope="session")
def colour_folder(tmp_path_factory):
    """Three easily told classes, 20 train / 10 val images each, mixed JPEG/PNG/gray/palette."""
    return make_image_folder(tmp_path_factory.mktemp("data") / "colours", classes=3, per_class=30)

