"""Unreadable images, found before training: fail naming the first, or leave those items out
and list them in <workdir>/skipped_images.csv (--on_bad_image).

With a `check_cache` directory (the feature cache of runs on cached features), each image's
verdict is kept in <check_cache>/image_checks.json under its path, size and mtime, so that the
cells of an experiment decode the catalogue once, not once per cell.
"""

import json
import os

import numpy as np
import pandas as pd

from cfimage import atomic
from cfimage.catalogue import reader
from cfimage.errors import UserError
from cfimage.stage2 import data


CHECKS_FILE = "image_checks.json"


def _fingerprint(path):
    """[size, mtime_ns] of an image file, or None when it cannot be stat'ed (never cached)."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return [int(stat.st_size), int(stat.st_mtime_ns)]


def _load_checks(path):
    try:
        with open(path, encoding="utf-8") as handle:
            checks = json.load(handle)
    except (OSError, ValueError):
        return {}  # absent or unreadable: every image is checked again
    return checks if isinstance(checks, dict) else {}


def find_unreadable_images(image_paths, check_cache=None, log=print):
    """{index: reason} of the images that cannot be used (data.find_unreadable_images).

    With `check_cache`, images whose path, size, mtime and pixel limit match a recorded
    verdict are not decoded again; the new verdicts are merged into the record.
    """
    if check_cache is None:
        return data.find_unreadable_images(image_paths, log=log)
    record = os.path.join(check_cache, CHECKS_FILE)
    checks = _load_checks(record)
    bad, unknown, fresh = {}, [], {}
    for index, path in enumerate(image_paths):
        key = os.path.abspath(path)
        fingerprint = _fingerprint(path)
        known = checks.get(key)
        if (fingerprint is not None and isinstance(known, dict)
                and known.get("fingerprint") == fingerprint + [data.MAX_IMAGE_PIXELS]):
            if known.get("bad"):
                bad[index] = known["bad"]
        else:
            unknown.append(index)
            fresh[index] = (key, fingerprint)
    if unknown:
        log(f"checking {len(unknown)} image(s) by decoding them ({len(image_paths) - len(unknown)}"
            f" known unchanged from {record})")
        found = data.find_unreadable_images([image_paths[i] for i in unknown], log=log)
        for position, index in enumerate(unknown):
            key, fingerprint = fresh[index]
            if position in found:
                bad[index] = found[position]
            if fingerprint is not None:
                checks[key] = {"fingerprint": fingerprint + [data.MAX_IMAGE_PIXELS],
                               "bad": found.get(position)}
        os.makedirs(check_cache, exist_ok=True)
        atomic.write_text(record, json.dumps(checks))
    else:
        log(f"{len(image_paths)} images unchanged since they were checked ({record})")
    return bad


def drop_unreadable_images(catalogue, spec, on_bad_image, workdir, log=print, check_cache=None):
    """Decodes every image of `catalogue` once (or, with `check_cache`, those not checked
    before). With none unreadable, returns it unchanged; otherwise raises a UserError naming the
    first (`on_bad_image="fail"`), or returns the catalogue without those items and writes them
    to <workdir>/skipped_images.csv ("skip")."""
    bad = find_unreadable_images(catalogue.image_paths, check_cache, log=log)
    if not bad:
        return catalogue
    first = min(bad)
    where = (f"{os.path.join(catalogue.root, spec.items_file)}, line {first + 2}, item "
             f"{str(catalogue.item_ids[first])!r}")
    if on_bad_image == "fail":
        raise UserError(
            f"{where}: image {catalogue.image_paths[first]} cannot be read "
            f"({bad[first]}); {len(bad)} unreadable image(s) in all. Fix or remove them, "
            "or pass --on_bad_image=skip to leave those items out.")
    rows = sorted(bad)
    skipped = pd.DataFrame({"item_id": catalogue.item_ids[rows],
                            "image": catalogue.image_paths[rows],
                            "reason": [bad[i] for i in rows]})
    path = os.path.join(workdir, "skipped_images.csv")
    skipped.to_csv(path, index=False)
    log(f"skipped {len(bad)} item(s) with unreadable images (--on_bad_image=skip): "
        f"{', '.join(skipped.item_id[:20])}{' ...' if len(bad) > 20 else ''}; list in {path}")
    return reader.drop_items(catalogue, np.isin(np.arange(catalogue.num_items), rows))
