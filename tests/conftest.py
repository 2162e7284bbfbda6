"""Shared test fixtures: tiny generated catalogues, and where the MovieLens data is (if anywhere).

Tests import the helpers here as `tests.conftest` (every test folder is a package).
"""

import os

import cfimage  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import pytest

# The prepared MovieLens posters catalogue (shared/data/movielens_posters) is not in the
# repository: tests find it through this variable, which .ci/run sets when shared/ lies beside
# the clone.
MOVIELENS_ENV = "CFIMAGE_MOVIELENS_DIR"


def pytest_collection_modifyitems(items):
    """Files with a slow test first, otherwise in collection order: pytest-xdist
    (--dist loadfile --no-loadscope-reorder, setup.cfg) hands whole files to its workers in
    this order, so the long files start early and the last ones to run are short."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # a stable sort


def movielens_dir():
    """The folder named by $CFIMAGE_MOVIELENS_DIR, or None when it is unset or missing."""
    path = os.environ.get(MOVIELENS_ENV, "")
    return path if path and os.path.isdir(path) else None


@pytest.fixture(scope="session")
def movielens():
    """The MovieLens posters catalogue folder; skips the test when it is not available."""
    path = movielens_dir()
    if path is None:
        pytest.skip(f"needs the MovieLens posters catalogue: set ${MOVIELENS_ENV} to "
                    "shared/data/movielens_posters (unset or missing here)")
    return path


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory):
    """A 120-item demo catalogue (generated, deterministic)."""
    from cfimage.catalogue import demo
    root = tmp_path_factory.mktemp("demo")
    return demo.make_demo_catalogue(str(root), seed=3, num_items=120, num_users=60,
                                    image_size=32)


def write_catalogue(root, items, interactions, images=()):
    """Writes a hand-made catalogue: `items`/`interactions` are CSV texts."""
    from cfimage.catalogue import demo
    import numpy as np
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    for name in images:
        demo.write_png(os.path.join(root, name), np.full((8, 8, 3), 100, np.uint8))
    with open(os.path.join(root, "items.csv"), "w") as f:
        f.write(items)
    with open(os.path.join(root, "interactions.csv"), "w") as f:
        f.write(interactions)
    return str(root)
