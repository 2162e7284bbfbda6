"""scripts/prepare_amazon.py on a tiny Amazon-2014-format fixture served from 127.0.0.1."""

import csv
import gzip
import json
import sys

import pytest

from cfimage.catalogue.reader import CatalogueSpec, load_catalogue
from tests.scripts.test_prepare_common import SCRIPTS, png_bytes, serve

if SCRIPTS not in sys.path:
    sys.path.insert(0, SCRIPTS)

import prepare_amazon  # noqa: E402
from _prepare_common import PrepareError  # noqa: E402

T = "Toys & Games"
# asin -> category paths. Prefixes without the leaf, counted over items with an image
# (A1..A5; A6's image is missing, A7 has no image URL):
#   Toys & Games 5, > Games 3, > Games > Board Games 1, > Puzzles 2, > Dolls 1.
# min_items=2: "> Games > Board Games" merges into "> Games" (A1 already has it),
# "> Dolls" merges into the root, and the root is dropped, so A5 ends up unlabelled.
CATEGORIES = {
    "A1": [[T, "Games", "Board Games", "Strategy"]],
    "A2": [[T, "Games", "Card Games"]],
    "A3": [[T, "Puzzles", "Jigsaw"]],
    "A4": [[T, "Puzzles", "Jigsaw"], [T, "Games", "Dice"]],
    "A5": [[T, "Dolls", "Barbie"]],
    "A6": [[T, "Puzzles", "3D"]],
    "A7": [[T, "Games", "Card Games"]],
    "B9": [[T, "Games", "Other"]],  # metadata of an item nobody reviewed: ignored
}
EXPECTED_LABELS = {"A1": "Toys & Games > Games", "A2": "Toys & Games > Games",
                   "A3": "Toys & Games > Puzzles",
                   "A4": "Toys & Games > Games|Toys & Games > Puzzles", "A5": ""}
REVIEWS = [("U1", "A1", 5.0, 1400000000), ("U1", "A2", 4.0, 1400000001),
           ("U2", "A3", 3.0, 1400000002), ("U2", "A4", 1.0, 1400000003),
           ("U3", "A5", 2.0, 1400000004), ("U3", "A6", 5.0, 1400000005),
           ("U3", "A7", 4.0, 1400000006), ("U1", "A4", 4.0, 1400000007)]


def _write_fixture(site, base):
    """reviews_*_5.json.gz (JSON lines) and meta_*.json.gz (Python-literal dicts) + images."""
    with gzip.open(site / "reviews_Toys_and_Games_5.json.gz", "wt", encoding="utf-8") as f:
        for user, asin, overall, time in REVIEWS:
            f.write(json.dumps({"reviewerID": user, "asin": asin, "reviewerName": "x",
                                "helpful": [0, 0], "reviewText": "fun", "overall": overall,
                                "summary": "ok", "unixReviewTime": time,
                                "reviewTime": "05 13, 2014"}) + "\n")
    with gzip.open(site / "meta_Toys_and_Games.json.gz", "wt", encoding="utf-8") as f:
        for asin, categories in CATEGORIES.items():
            record = {"asin": asin, "title": "Bob's toy", "price": 9.99,
                      "related": {"also_bought": ["A2"]}, "categories": categories}
            if asin != "A7":
                record["imUrl"] = f"{base}img/{asin}.jpg"
            f.write(repr(record) + "\n")  # Python literal: single quotes, like the release
    (site / "img").mkdir()
    for asin in ("A1", "A2", "A3", "A4", "A5", "B9"):
        (site / "img" / f"{asin}.jpg").write_bytes(png_bytes(10 * len(asin)))


def test_labels_by_hand():
    assert prepare_amazon.path_labels([["R", "a", "b"], ["R", "c"]]) == {
        ("R",), ("R", "a"), }
    # Repeated merging: C and D (1 item each) merge into R > B (2 items), still rare with
    # min_items=3, so it merges into R; the root is dropped.
    merged = prepare_amazon.merge_rare_labels(
        {1: {("R", "B", "C")}, 2: {("R", "B", "D")}, 3: {("R", "E")}, 4: {("R", "E")},
         5: {("R", "E"), ("R",)}}, 3)
    assert merged == {1: [], 2: [], 3: ["R > E"], 4: ["R > E"], 5: ["R > E"]}


def test_amazon_end_to_end_online_then_rerun(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    out = tmp_path / "catalogue"
    with serve(site) as (base, requests):
        _write_fixture(site, base)
        argv = ["--category=Toys_and_Games", f"--source={base}", f"--out={out}",
                "--min_items=2", "--workers=3", "--timeout=5", "--retries=2"]
        counts = prepare_amazon.main(argv)
        assert requests["/img/A1.jpg"] == 1 and requests["/img/B9.jpg"] == 0
        assert requests["/reviews_Toys_and_Games_5.json.gz"] == 1

        with open(out / "items.csv", encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
        assert {r["item_id"]: r["labels"] for r in rows} == EXPECTED_LABELS
        assert rows[0]["image"] == "images/A1.jpg"
        with open(out / "image_failures.csv", encoding="utf-8", newline="") as f:
            failures = list(csv.DictReader(f))
        assert [r["item_id"] for r in failures] == ["A6"] and "404" in failures[0]["error"]
        assert counts == {"reviews": 8, "users": 3, "reviewed_items": 7,
                          "items_with_metadata": 7, "items_with_image_url": 6,
                          "image_failures": 1, "items": 5, "unlabelled_items": 1, "labels": 2,
                          "reviews_on_items_without_image": 2}

        catalogue = load_catalogue(str(out), CatalogueSpec(unknown_interaction_items="keep"))
        assert catalogue.label_names == ["Toys & Games > Games", "Toys & Games > Puzzles"]
        assert len(catalogue.interactions) == 8  # reviews of A6 and A7 are kept
        assert list(catalogue.interactions.weight[:2]) == [5.0, 4.0]

        # Rerun offline from the downloaded files: no data file or finished image fetched again.
        prepare_amazon.main(argv[:1] + [f"--source={out / 'raw'}"] + argv[2:])
        assert requests["/reviews_Toys_and_Games_5.json.gz"] == 1
        assert requests["/img/A1.jpg"] == 1 and requests["/img/A6.jpg"] == 2


def test_malformed_metadata_names_file_and_line(tmp_path):
    with gzip.open(tmp_path / "reviews_X_5.json.gz", "wt") as f:
        f.write('{"reviewerID": "U", "asin": "A", "overall": 5.0, "unixReviewTime": 1}\n')
    with gzip.open(tmp_path / "meta_X.json.gz", "wt") as f:
        f.write("{'asin': 'A', 'categories': [['R', 'S']]}\n{'asin': 'B', 'imUrl': \n")
    with pytest.raises(PrepareError, match=r"meta_X.json.gz, line 2: not a Python-literal"):
        prepare_amazon.prepare(prepare_amazon.parse_args(
            ["--category=X", f"--source={tmp_path}", f"--out={tmp_path / 'o'}"]))

    with gzip.open(tmp_path / "reviews_X_5.json.gz", "wt") as f:
        f.write('{"reviewerID": "U", "asin": "A", "unixReviewTime": 1}\n')
    with pytest.raises(PrepareError, match=r"reviews_X_5.json.gz, line 1: needs .*overall"):
        prepare_amazon.prepare(prepare_amazon.parse_args(
            ["--category=X", f"--source={tmp_path}", f"--out={tmp_path / 'o'}"]))
