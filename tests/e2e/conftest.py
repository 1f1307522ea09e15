"""Session fixtures for the image and deployment tests: the images are built once
(buildah keeps layers, so an unchanged tree rebuilds in seconds)."""

from __future__ import annotations

import pytest

from tests.e2e.images import Images, build_images


@pytest.fixture(scope="session")
def images() -> Images:
    return build_images()
