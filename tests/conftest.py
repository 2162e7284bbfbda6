"""Shared test fixtures: tiny generated catalogues."""

import os

import cfimage  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import pytest

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                           "movielens_posters")


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
