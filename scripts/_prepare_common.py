"""Helpers shared by the scripts/prepare_*.py dataset converters.

Plain functions, no flags: locating input files (local path, local folder or URL), reading text
files that may be gzipped, a resumable parallel image downloader, and writing a catalogue
(items.csv + interactions.csv, see README "Your own data").
"""

import concurrent.futures
import csv
import gzip
import os
import shutil
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

from cfimage import atomic

USER_AGENT = "cfimage-prepare/1.0 (+https://github.com/; research dataset preparation)"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")
ITEMS_HEADER = ("item_id", "image", "labels")


class PrepareError(ValueError):
    """A problem with the input files or flags that the user can fix."""


def log(message):
    print(message, file=sys.stderr, flush=True)


def is_url(text):
    return urllib.parse.urlparse(text).scheme in ("http", "https", "ftp", "file")


def _download(url, path, timeout):
    """Downloads `url` to `path` through a temporary file in the same folder (atomic rename)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    with atomic.replacing(path) as temporary:
        with open(temporary, "wb") as out, \
                urllib.request.urlopen(request, timeout=timeout) as response:
            expected = response.headers.get("Content-Length")
            shutil.copyfileobj(response, out, 1 << 20)
            size = out.tell()
        if expected is not None and size != int(expected):
            raise OSError(f"truncated download: {size} of {expected} bytes")
        if size == 0:
            raise OSError("empty response")


def resolve_input(source, name, download_dir, timeout=60.0):
    """Returns a local path for an input file.

    `source` is a local file, a local folder that holds `name`, or a URL / URL prefix (ending in
    "/") that is fetched into `download_dir` (kept there: a second run does not download again).
    """
    if not is_url(source):
        path = os.path.join(source, name) if os.path.isdir(source) else source
        if not os.path.isfile(path):
            raise PrepareError(f"input file not found: {path} (expected {name}; pass a local "
                               "file, a folder that holds it, or a URL)")
        return path
    url = source + name if source.endswith("/") else source
    path = os.path.join(download_dir, os.path.basename(urllib.parse.urlparse(url).path) or name)
    if os.path.isfile(path):
        log(f"using {path} (already downloaded)")
        return path
    log(f"downloading {url} -> {path}")
    try:
        _download(url, path, timeout)
    except OSError as error:
        raise PrepareError(f"could not download {url}: {error}. Without internet access, "
                           "download the file elsewhere and pass its local path.") from error
    return path


def open_text(path):
    """Opens a text file for reading, gunzipping it when its name ends in .gz."""
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8", newline="")


def safe_file_name(item_id):
    """A file name for an item id: keeps [A-Za-z0-9._-], percent-escapes the rest."""
    name = urllib.parse.quote(str(item_id), safe="._-")
    return name if name not in ("", ".", "..") else urllib.parse.quote(name, safe="")


def _extension(url):
    extension = os.path.splitext(urllib.parse.urlparse(url).path)[1].lower()
    return extension if extension in IMAGE_EXTENSIONS else ".jpg"


def download_images(jobs, out_dir, *, workers=8, timeout=30.0, retries=3,
                    progress_every=1000, backoff=1.0):
    """Downloads item images in parallel; safe to interrupt and rerun.

    jobs: iterable of (item_id, url). Each image goes to `out_dir/<item id><ext>`, written to a
    temporary file and renamed when complete, so a file with the final name is always complete
    and a rerun skips it. Every URL gets `retries` attempts with `timeout` seconds each.
    Returns ({item_id: image path}, [(item_id, url, error)]).
    """
    os.makedirs(out_dir, exist_ok=True)
    jobs = list(jobs)
    done, failures = {}, []
    lock = threading.Lock()
    counter = {"n": 0, "skipped": 0}
    start = time.time()

    def fetch(item_id, url):
        path = os.path.join(out_dir, safe_file_name(item_id) + _extension(url))
        if os.path.isfile(path) and os.path.getsize(path) > 0:
            return item_id, path, None, True
        error = None
        for attempt in range(max(1, retries)):
            try:
                _download(url, path, timeout)
                return item_id, path, None, False
            except Exception as exc:  # any failure is counted, and retried unless permanent
                error = f"{type(exc).__name__}: {exc}"
                permanent = (isinstance(exc, urllib.error.HTTPError) and 400 <= exc.code < 500
                             and exc.code not in (408, 429))
                if permanent:
                    break
                if attempt + 1 < retries:
                    time.sleep(backoff * (attempt + 1))
        return item_id, path, error, False

    def record(result):
        item_id, path, error, skipped = result
        with lock:
            counter["n"] += 1
            counter["skipped"] += skipped
            if error is None:
                done[item_id] = path
            else:
                failures.append((item_id, urls[item_id], error))
            if progress_every and counter["n"] % progress_every == 0:
                log(f"  images: {counter['n']}/{len(jobs)} done ({counter['skipped']} already "
                    f"there, {len(failures)} failed, {time.time() - start:.0f}s)")

    urls = dict(jobs)
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for future in concurrent.futures.as_completed(
                [pool.submit(fetch, item_id, url) for item_id, url in jobs]):
            record(future.result())
    log(f"images: {len(done)} of {len(jobs)} available ({counter['skipped']} were already "
        f"downloaded), {len(failures)} failed")
    return done, sorted(failures)


def write_failures(path, failures):
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("item_id", "url", "error"))
        writer.writerows(failures)


def write_catalogue(out_dir, items, interactions, interaction_columns):
    """Writes items.csv (rows of item_id, image, labels list) and interactions.csv."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "items.csv"), "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(ITEMS_HEADER)
        for item_id, image, labels in items:
            writer.writerow((item_id, image, "|".join(labels)))
    with open(os.path.join(out_dir, "interactions.csv"), "w", encoding="utf-8",
              newline="") as f:
        writer = csv.writer(f)
        writer.writerow(interaction_columns)
        writer.writerows(interactions)


def clean_label(name):
    """Labels are "|"-separated in items.csv, so a "|" inside a name becomes "/"."""
    return " ".join(str(name).replace("|", "/").split())


def add_download_arguments(parser, progress_every):
    """The image-download and progress flags shared by the Amazon and Pinterest tools."""
    parser.add_argument("--workers", type=int, default=16, help="parallel image downloads")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    parser.add_argument("--retries", type=int, default=3, help="attempts per image")
    parser.add_argument("--progress_every", type=int, default=progress_every,
                        help="log progress every N input lines (0 = never)")
    parser.add_argument("--image_progress_every", type=int, default=1000,
                        help="log progress every N images (0 = never)")


def run_main(tool, prepare, args):
    """Runs `prepare(args)`; a PrepareError ends the process with one clear line."""
    try:
        counts = prepare(args)
    except PrepareError as error:
        sys.exit(f"{tool}: error: {error}")
    log(f"catalogue written to {os.path.abspath(args.out)}")
    for key, value in counts.items():
        log(f"  {key}: {value}")
    return counts
