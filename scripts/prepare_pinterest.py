"""Turns the Pinterest social-curation data (Zhong et al., ICWSM 2015, "Sharing the Loves:
Understanding the How and Why of Online Content Curation", King's College London) into a
single-label cfimage catalogue: items = pins with more than --min_repins repins, label = the
category of the pin's board, interactions = repins (user, pin).

Assumed layout. The KCL release is not redistributed here and its exact export differs between
copies, so the script reads two tables whose field names are flags:

  pins      one row per pin:     pin_id, image_url, category  (the board category, e.g. "Art")
  repins    one row per repin:   user_id, pin_id [, timestamp]

Each table is a CSV file with a header (.csv, .csv.gz) or JSON lines (.json, .jsonl, and .gz of
them: one object a line with those keys). A pin listed twice keeps its first row; an empty
category makes the pin unlabelled. Convert other exports to this layout first, or point the
--*_field flags at your names.

By default interactions.csv holds the repins of the kept pins (also of kept pins whose image could
not be fetched: train with `--unknown_interaction_items=keep`); --keep_all_repins writes every
repin (pins with few repins then teach the two-tower model too). Failed image downloads are
listed in <out>/image_failures.csv; rerunning retries only those.

An --images_dir outside --out makes a catalogue whose image paths leave its folder:
cfimage.train then needs --allow_outside_paths (the default <out>/images needs nothing).

Offline (tables and, optionally, images already on disk as <images_dir>/<pin_id>.jpg):

    python scripts/prepare_pinterest.py --pins=/data/pinterest/pins.csv \\
        --repins=/data/pinterest/repins.csv --out=/data/catalogues/pinterest

Online (tables fetched by URL into <out>/raw/, images from each pin's image_url):

    python scripts/prepare_pinterest.py --pins=https://example.org/kcl/pins.jsonl.gz \\
        --repins=https://example.org/kcl/repins.jsonl.gz --out=/data/catalogues/pinterest \\
        --workers=32
"""

import argparse
import collections
import csv
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _prepare_common import (PrepareError, add_download_arguments, clean_label,  # noqa: E402
                             download_images, log, run_main,
                             open_text, resolve_input, write_catalogue, write_failures)


def read_table(path, fields, progress_every=1_000_000):
    """Yields (line number, {field: value}) for CSV or JSON-lines files; checks `fields`."""
    name = path[:-3] if path.endswith(".gz") else path
    as_json = name.endswith((".json", ".jsonl"))
    with open_text(path) as f:
        if as_json:
            rows = ((n, line) for n, line in enumerate(f, start=1) if line.strip())
        else:
            reader = csv.DictReader(f)
            missing = [field for field in fields if field not in (reader.fieldnames or [])]
            if missing:
                raise PrepareError(f"{path}, line 1: missing column(s) {missing}; the header "
                                   f"is {reader.fieldnames}. Set the --*_field flags.")
            rows = ((n, row) for n, row in enumerate(reader, start=2))
        for number, row in rows:
            if as_json:
                try:
                    row = json.loads(row)
                except json.JSONDecodeError as error:
                    raise PrepareError(f"{path}, line {number}: not a JSON object "
                                       f"({error}).") from None
                missing = [field for field in fields if field not in row]
                if missing:
                    raise PrepareError(f"{path}, line {number}: missing key(s) {missing} "
                                       f"in {sorted(row)}. Set the --*_field flags.")
            if any(row[field] is None for field in fields):
                raise PrepareError(f"{path}, line {number}: a value of {fields} is missing.")
            if progress_every and number % progress_every == 0:
                log(f"  {os.path.basename(path)}: {number} lines read")
            yield number, row


def read_pins(path, args):
    """{pin_id: (image_url, category)}."""
    pins = {}
    fields = (args.pin_id_field, args.image_url_field, args.category_field)
    for number, row in read_table(path, fields, args.progress_every):
        pin = str(row[args.pin_id_field]).strip()
        if not pin:
            raise PrepareError(f"{path}, line {number}: empty {args.pin_id_field!r}.")
        pins.setdefault(pin, (str(row[args.image_url_field]).strip(),
                              clean_label(row[args.category_field])))
    if not pins:
        raise PrepareError(f"{path}: no pins.")
    return pins


def read_repins(path, args):
    """[(user_id, pin_id, timestamp)] (timestamp "" when the file has none)."""
    repins = []
    fields = (args.user_id_field, args.pin_id_field)
    for number, row in read_table(path, fields, args.progress_every):
        user, pin = str(row[args.user_id_field]).strip(), str(row[args.pin_id_field]).strip()
        if not user or not pin:
            raise PrepareError(f"{path}, line {number}: empty user or pin id.")
        repins.append((user, pin, str(row.get(args.timestamp_field) or "")))
    if not repins:
        raise PrepareError(f"{path}: no repins.")
    return repins


def prepare(args):
    out_dir = os.path.abspath(args.out)
    download_dir = os.path.join(out_dir, "raw")
    images_dir = os.path.abspath(args.images_dir or os.path.join(out_dir, "images"))
    pins_path = resolve_input(args.pins, "pins.csv", download_dir)
    repins_path = resolve_input(args.repins, "repins.csv", download_dir)

    log(f"reading {pins_path}")
    pins = read_pins(pins_path, args)
    log(f"reading {repins_path}")
    repins = read_repins(repins_path, args)
    counts = collections.Counter(pin for _, pin, _ in repins)
    kept = {pin for pin, n in counts.items() if n > args.min_repins and pin in pins}
    jobs = sorted((pin, pins[pin][0]) for pin in kept if pins[pin][0])
    log(f"{len(pins)} pins, {len(repins)} repins; {len(kept)} pins with more than "
        f"{args.min_repins} repins, {len(jobs)} of them with an image URL")

    images, failures = download_images(jobs, images_dir, workers=args.workers,
                                       timeout=args.timeout, retries=args.retries,
                                       progress_every=args.image_progress_every)
    os.makedirs(out_dir, exist_ok=True)
    write_failures(os.path.join(out_dir, "image_failures.csv"), failures)
    items = [(pin, os.path.relpath(images[pin], out_dir),
              [pins[pin][1]] if pins[pin][1] else []) for pin in sorted(images)]
    if not items:
        raise PrepareError(f"no pin with more than {args.min_repins} repins has an image "
                           f"({len(failures)} download(s) failed).")
    interactions = [(user, pin, timestamp) for user, pin, timestamp in repins
                    if args.keep_all_repins or pin in kept]
    has_time = any(timestamp for _, _, timestamp in interactions)
    if has_time:
        write_catalogue(out_dir, items, interactions, ("user_id", "item_id", "timestamp"))
    else:
        write_catalogue(out_dir, items, [row[:2] for row in interactions],
                        ("user_id", "item_id"))
    return {
        "pins": len(pins), "repins": len(repins), "pins_kept": len(kept),
        "image_failures": len(failures), "items": len(items),
        "labels": len({labels[0] for _, _, labels in items if labels}),
        "unlabelled_items": sum(1 for _, _, labels in items if not labels),
        "interactions": len(interactions),
        "repins_on_pins_without_image": sum(1 for _, pin, _ in interactions
                                            if pin not in images),
    }


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pins", required=True, help="pins table: path or URL")
    parser.add_argument("--repins", required=True, help="repins table: path or URL")
    parser.add_argument("--out", required=True, help="catalogue directory to write")
    parser.add_argument("--images_dir", help="image folder (default <out>/images)")
    parser.add_argument("--min_repins", type=int, default=10,
                        help="keep pins with MORE than this many repins")
    parser.add_argument("--keep_all_repins", action="store_true",
                        help="write the repins of every pin, not only of the kept ones")
    parser.add_argument("--pin_id_field", default="pin_id")
    parser.add_argument("--image_url_field", default="image_url")
    parser.add_argument("--category_field", default="category")
    parser.add_argument("--user_id_field", default="user_id")
    parser.add_argument("--timestamp_field", default="timestamp")
    add_download_arguments(parser, progress_every=1_000_000)
    return parser.parse_args(argv)


def main(argv=None):
    return run_main("prepare_pinterest", prepare, parse_args(argv))


if __name__ == "__main__":
    main()
