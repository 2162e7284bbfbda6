"""scripts/prepare_pinterest.py on tiny fixtures in the documented layout (CSV and JSON lines)."""

import csv
import gzip
import json
import sys

import pytest

from cfimage.catalogue.reader import CatalogueSpec, load_catalogue
from tests.scripts.test_prepare_common import SCRIPTS, png_bytes, serve

if SCRIPTS not in sys.path:
    sys.path.insert(0, SCRIPTS)

import prepare_pinterest  # noqa: E402
from _prepare_common import PrepareError  # noqa: E402

# pin -> (category, repins). With --min_repins=2 pins need MORE than 2 repins:
# p1 (3, Art), p2 (4, Food), p3 (3, no category -> unlabelled), p4 (3, Art, image missing)
# are kept; p5 (exactly 2) is not.
PINS = {"p1": ("Art", 3), "p2": ("Food", 4), "p3": ("", 3), "p4": ("Art", 3), "p5": ("Food", 2)}


def _repins():
    return [(f"u{k}", pin, str(1000 + k)) for pin, (_, n) in PINS.items() for k in range(n)]


def _write_tables(folder, base, as_json):
    if as_json:
        with gzip.open(folder / "pins.jsonl.gz", "wt", encoding="utf-8") as f:
            for pin, (category, _) in PINS.items():
                f.write(json.dumps({"pin_id": pin, "image_url": f"{base}{pin}.jpg",
                                    "category": category}) + "\n")
        with gzip.open(folder / "repins.jsonl.gz", "wt", encoding="utf-8") as f:
            for user, pin, _ in _repins():
                f.write(json.dumps({"user_id": user, "pin_id": pin}) + "\n")
        return folder / "pins.jsonl.gz", folder / "repins.jsonl.gz"
    with open(folder / "pins.csv", "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([("pin_id", "image_url", "category")] + [
            (pin, f"{base}{pin}.jpg", category) for pin, (category, _) in PINS.items()])
    with open(folder / "repins.csv", "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([("user_id", "pin_id", "timestamp")] + _repins())
    return folder / "pins.csv", folder / "repins.csv"


@pytest.mark.parametrize("as_json", [False, True])
def test_pinterest_end_to_end(tmp_path, as_json):
    site = tmp_path / "site"
    site.mkdir()
    for pin in ("p1", "p2", "p3", "p5"):
        (site / f"{pin}.jpg").write_bytes(png_bytes())
    out = tmp_path / "catalogue"
    with serve(site) as (base, requests):
        pins, repins = _write_tables(tmp_path, base, as_json)
        counts = prepare_pinterest.main([f"--pins={pins}", f"--repins={repins}", f"--out={out}",
                                         "--min_repins=2", "--retries=1", "--timeout=5"])
        assert requests["/p5.jpg"] == 0 and requests["/p4.jpg"] == 1
    with open(out / "items.csv", encoding="utf-8", newline="") as f:
        assert list(csv.reader(f)) == [["item_id", "image", "labels"],
                                       ["p1", "images/p1.jpg", "Art"],
                                       ["p2", "images/p2.jpg", "Food"],
                                       ["p3", "images/p3.jpg", ""]]
    assert counts["pins_kept"] == 4 and counts["image_failures"] == 1
    assert counts["interactions"] == 13 and counts["repins_on_pins_without_image"] == 3
    catalogue = load_catalogue(str(out), CatalogueSpec(unknown_interaction_items="keep"))
    assert catalogue.label_names == ["Art", "Food"] and not catalogue.multi_label
    assert len(catalogue.interactions) == 13
    assert ("timestamp" in catalogue.interactions) == (not as_json)


def test_keep_all_repins_and_missing_column(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    for pin in PINS:
        (site / f"{pin}.jpg").write_bytes(png_bytes())
    with serve(site) as (base, _):
        pins, repins = _write_tables(tmp_path, base, as_json=False)
        counts = prepare_pinterest.main([f"--pins={pins}", f"--repins={repins}",
                                         f"--out={tmp_path / 'out'}", "--min_repins=2",
                                         "--keep_all_repins"])
    assert counts["items"] == 4 and counts["interactions"] == 15
    with pytest.raises(PrepareError, match=r"pins.csv, line 1: missing column\(s\) \['board'\]"):
        prepare_pinterest.prepare(prepare_pinterest.parse_args([
            f"--pins={pins}", f"--repins={repins}", f"--out={tmp_path / 'o'}",
            "--category_field=board"]))
