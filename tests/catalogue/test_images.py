"""Unreadable images found before training (cfimage/catalogue/images.py): the verdicts kept in
a check cache, so that the cells of an experiment decode a catalogue once."""

import json
import os

import numpy as np

from cfimage.catalogue import demo, images
from cfimage.stage2 import data


def _png(path, value):
    demo.write_png(str(path), np.full((8, 8, 3), value, np.uint8))
    return str(path)


def _counting(monkeypatch):
    """Wraps the real decoder check and records the paths it was given."""
    decoded, real = [], data.find_unreadable_images

    def find(paths, log=None):
        decoded.extend(paths)
        return real(paths, log=log)
    monkeypatch.setattr(data, "find_unreadable_images", find)
    return decoded


def test_a_second_check_decodes_nothing_and_gives_the_same_verdicts(tmp_path, monkeypatch):
    good = _png(tmp_path / "good.png", 10)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    decoded = _counting(monkeypatch)
    cache = str(tmp_path / "cache")
    first = images.find_unreadable_images([good, str(broken)], cache, log=lambda _: None)
    assert set(first) == {1} and decoded == [good, str(broken)]
    second = images.find_unreadable_images([good, str(broken)], cache, log=lambda _: None)
    assert second == first and decoded == [good, str(broken)]  # nothing decoded again
    record = json.loads((tmp_path / "cache" / images.CHECKS_FILE).read_text())
    assert record[os.path.abspath(good)]["bad"] is None


def test_a_changed_image_is_decoded_again(tmp_path, monkeypatch):
    path = _png(tmp_path / "a.png", 10)
    cache = str(tmp_path / "cache")
    assert images.find_unreadable_images([path], cache, log=lambda _: None) == {}
    with open(path, "wb") as handle:  # truncated after the first check: new size and mtime
        handle.write(b"\x89PNG\r\n")
    decoded = _counting(monkeypatch)
    bad = images.find_unreadable_images([path], cache, log=lambda _: None)
    assert decoded == [path] and list(bad) == [0]


def test_without_a_cache_every_image_is_decoded_and_nothing_is_written(tmp_path, monkeypatch):
    path = _png(tmp_path / "a.png", 10)
    decoded = _counting(monkeypatch)
    for _ in range(2):
        assert images.find_unreadable_images([path], None, log=lambda _: None) == {}
    assert decoded == [path, path]
    assert sorted(os.listdir(tmp_path)) == ["a.png"]
