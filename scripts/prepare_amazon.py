"""Turns an Amazon 2014 (McAuley) category into a cfimage catalogue.

Inputs, per category (e.g. Toys_and_Games, Clothing_Shoes_and_Jewelry), from
http://jmcauley.ucsd.edu/data/amazon/ (2014 "product graph" release):
  reviews_<Category>_5.json.gz  5-core reviews, one JSON object a line: reviewerID, asin,
                                overall (1-5 stars), unixReviewTime, ...
  meta_<Category>.json.gz       product metadata, one Python-literal dict a line (single quotes,
                                read with ast.literal_eval): asin, imUrl, categories (a list of
                                category paths, each a list of names from the root down), ...
  the product images            fetched from each product's imUrl.

Labels, as in Bibas et al. 2022: every prefix of each of an item's category paths except the leaf
is a label, named by the names of the prefix joined with " > " (e.g. "Toys & Games > Puzzles").
Labels carried by fewer than --min_items items are merged into their parent, repeated until no
label is rare; then the root labels (one name) are dropped. Counts are taken over the items that
end up in items.csv (5-core items with metadata and a downloaded image).

interactions.csv holds every 5-core review (user_id = reviewerID, item_id = asin,
weight = overall, timestamp = unixReviewTime), also those on items whose image could not be
fetched: train with `--unknown_interaction_items=keep`. Failed image downloads are counted and
listed in <out>/image_failures.csv; rerunning the command retries only those (images already on
disk are kept).

Online (downloads the two files into <out>/raw/ and the images into <out>/images/):

    python scripts/prepare_amazon.py --category=Toys_and_Games --min_items=100 \\
        --out=/data/catalogues/amazon_toys

Offline (the files downloaded elsewhere; a folder or the two paths):

    python scripts/prepare_amazon.py --category=Toys_and_Games --source=/data/amazon2014/ \\
        --out=/data/catalogues/amazon_toys --images_dir=/data/amazon2014/images
    python scripts/prepare_amazon.py --category=Toys_and_Games \\
        --reviews=/data/reviews_Toys_and_Games_5.json.gz \\
        --meta=/data/meta_Toys_and_Games.json.gz --out=/data/catalogues/amazon_toys

Images already in --images_dir (named <asin>.jpg) are used without any network access.
An --images_dir outside --out makes a catalogue whose image paths leave its folder:
cfimage.train then needs --allow_outside_paths (the default <out>/images needs nothing).
"""

import argparse
import ast
import collections
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _prepare_common import (PrepareError, add_download_arguments, clean_label,  # noqa: E402
                             download_images, log, run_main,
                             open_text, resolve_input, write_catalogue, write_failures)

DEFAULT_SOURCE = "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles/"
INTERACTION_COLUMNS = ("user_id", "item_id", "weight", "timestamp")
LABEL_JOIN = " > "


def read_reviews(path, progress_every=100_000):
    """[(reviewerID, asin, overall, unixReviewTime)] from a reviews_*.json(.gz) file."""
    reviews = []
    with open_text(path) as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                review = json.loads(line)
            except json.JSONDecodeError as error:
                raise PrepareError(f"{path}, line {number}: not a JSON object ({error}): "
                                   f"{line[:80]!r}") from None
            try:
                row = (str(review["reviewerID"]), str(review["asin"]),
                       float(review["overall"]), review.get("unixReviewTime", ""))
            except (KeyError, TypeError, ValueError) as error:
                raise PrepareError(f"{path}, line {number}: needs reviewerID, asin and a "
                                   f"numeric overall ({type(error).__name__}: {error}).") from None
            if not row[2] > 0:
                raise PrepareError(f"{path}, line {number}: overall is {review['overall']!r}; "
                                   "ratings must be > 0 (they become the interaction weight).")
            reviews.append(row)
            if progress_every and number % progress_every == 0:
                log(f"  reviews: {number} lines read")
    if not reviews:
        raise PrepareError(f"{path}: no reviews.")
    return reviews


def read_metadata(path, wanted, progress_every=100_000):
    """{asin: (imUrl or "", categories)} for the asins in `wanted`."""
    meta = {}
    with open_text(path) as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = ast.literal_eval(line)
            except (ValueError, SyntaxError) as error:
                try:  # some re-releases of the metadata are proper JSON
                    record = json.loads(line)
                except json.JSONDecodeError:
                    raise PrepareError(
                        f"{path}, line {number}: not a Python-literal (or JSON) dict "
                        f"({error}): {line[:80]!r}") from None
            if not isinstance(record, dict) or "asin" not in record:
                raise PrepareError(f"{path}, line {number}: expected a dict with an 'asin', "
                                   f"got {line[:80]!r}")
            asin = str(record["asin"])
            if asin in wanted and asin not in meta:
                categories = record.get("categories") or []
                if not (isinstance(categories, list)
                        and all(isinstance(p, (list, tuple)) for p in categories)):
                    raise PrepareError(f"{path}, line {number}: 'categories' of {asin} is "
                                       f"{categories!r}; expected a list of category paths.")
                meta[asin] = (str(record.get("imUrl") or "").strip(), categories)
            if progress_every and number % progress_every == 0:
                log(f"  metadata: {number} lines read")
    return meta


def path_labels(categories):
    """All prefixes of each category path except the full path (the leaf), as name tuples."""
    labels = set()
    for category_path in categories:
        names = tuple(clean_label(name) for name in category_path)
        labels.update(names[:depth] for depth in range(1, len(names)))
    return labels


def merge_rare_labels(item_labels, min_items):
    """Merges labels with fewer than `min_items` items into their parent until none is rare,
    then drops the roots. item_labels: {item: set of name tuples}; returns {item: sorted names}.
    """
    item_labels = {item: set(labels) for item, labels in item_labels.items()}
    while True:
        counts = collections.Counter(label for labels in item_labels.values() for label in labels)
        rare = {label for label, n in counts.items() if n < min_items and len(label) > 1}
        if not rare:
            break
        for item, labels in item_labels.items():
            item_labels[item] = {label[:-1] if label in rare else label for label in labels}
    return {item: sorted(LABEL_JOIN.join(label) for label in labels if len(label) > 1)
            for item, labels in item_labels.items()}


def prepare(args):
    out_dir = os.path.abspath(args.out)
    download_dir = args.download_dir or os.path.join(out_dir, "raw")
    images_dir = os.path.abspath(args.images_dir or os.path.join(out_dir, "images"))
    reviews_path = resolve_input(args.reviews or args.source,
                                 f"reviews_{args.category}_5.json.gz", download_dir)
    meta_path = resolve_input(args.meta or args.source, f"meta_{args.category}.json.gz",
                              download_dir)

    log(f"reading {reviews_path}")
    reviews = read_reviews(reviews_path, args.progress_every)
    reviewed = {asin for _, asin, _, _ in reviews}
    log(f"reading {meta_path}")
    meta = read_metadata(meta_path, reviewed, args.progress_every)
    jobs = sorted((asin, url) for asin, (url, _) in meta.items() if url)
    log(f"{len(reviews)} reviews on {len(reviewed)} items; {len(meta)} with metadata, "
        f"{len(jobs)} with an image URL")

    images, failures = download_images(jobs, images_dir, workers=args.workers,
                                       timeout=args.timeout, retries=args.retries,
                                       progress_every=args.image_progress_every)
    failures_path = os.path.join(out_dir, "image_failures.csv")
    os.makedirs(out_dir, exist_ok=True)
    write_failures(failures_path, failures)

    labels = merge_rare_labels(
        {asin: path_labels(meta[asin][1]) for asin in images}, args.min_items)
    items = [(asin, os.path.relpath(images[asin], out_dir), labels[asin])
             for asin in sorted(images)]
    if not items:
        raise PrepareError(f"no item has an image ({len(failures)} download(s) failed, see "
                           f"{failures_path}).")
    write_catalogue(out_dir, items, reviews, INTERACTION_COLUMNS)
    return {
        "reviews": len(reviews), "users": len({user for user, _, _, _ in reviews}),
        "reviewed_items": len(reviewed), "items_with_metadata": len(meta),
        "items_with_image_url": len(jobs), "image_failures": len(failures),
        "items": len(items), "unlabelled_items": sum(1 for _, _, ls in items if not ls),
        "labels": len({label for _, _, ls in items for label in ls}),
        "reviews_on_items_without_image": sum(1 for _, a, _, _ in reviews if a not in images),
    }


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--category", required=True,
                        help="e.g. Toys_and_Games, Clothing_Shoes_and_Jewelry")
    parser.add_argument("--source", default=DEFAULT_SOURCE,
                        help="URL prefix or local folder holding reviews_<Category>_5.json.gz "
                        "and meta_<Category>.json.gz")
    parser.add_argument("--reviews", help="the reviews file (path or URL), overrides --source")
    parser.add_argument("--meta", help="the metadata file (path or URL), overrides --source")
    parser.add_argument("--out", required=True, help="catalogue directory to write")
    parser.add_argument("--download_dir", help="where downloaded files go (default <out>/raw)")
    parser.add_argument("--images_dir", help="image folder (default <out>/images)")
    parser.add_argument("--min_items", type=int, default=10,
                        help="labels with fewer items are merged into their parent")
    add_download_arguments(parser, progress_every=100_000)
    return parser.parse_args(argv)


def main(argv=None):
    return run_main("prepare_amazon", prepare, parse_args(argv))


if __name__ == "__main__":
    main()
