"""Turns MovieLens ratings + a folder of posters into a cfimage catalogue.

Items are the movies that have a poster; their labels are the MovieLens genres
("(no genres listed)" = unlabelled). Every rating goes into interactions.csv (weight = the rating,
plus the timestamp), also ratings on movies without a poster: train with
`--unknown_interaction_items=keep` and they still teach the two-tower model.

Inputs (GroupLens files, https://grouplens.org/datasets/movielens/):
  ml-latest-small, ml-latest, ml-25m, ...  ratings.csv (userId,movieId,rating,timestamp),
                                           movies.csv (movieId,title,genres), links.csv
  ml-1m, ml-10m                            ratings.dat (UserID::MovieID::Rating::Timestamp),
                                           movies.dat (MovieID::Title::Genres)
Posters: one file per movie, `<id>.jpg` / `.jpeg` / `.png`, named by movieId (default) or by
imdbId (`--poster_id=imdbId`, needs links.csv; `tt0114709`, `0114709` and `114709` all match).

Offline (local files; nothing is downloaded):

    python scripts/prepare_movielens.py --ratings=/data/ml-latest-small/ratings.csv \\
        --posters=/data/posters/ml1m --out=/data/catalogues/movielens --min_label_count=10
    python scripts/prepare_movielens.py --ratings=/data/ml-10M100K/ratings.dat \\
        --posters=/data/posters_by_imdb --poster_id=imdbId --links=/data/links.csv \\
        --out=/data/catalogues/ml10m

Online: download and unzip a GroupLens archive first (they are zip files), e.g.
    curl -LO https://files.grouplens.org/datasets/movielens/ml-latest-small.zip && \\
        unzip ml-latest-small.zip
or read the ratings from a locally prepared TensorFlow Datasets copy (`--tfds_name`, genres come
from TFDS then, --movies is not used):
    python scripts/prepare_movielens.py --tfds_name=movielens/1m-ratings \\
        --tfds_data_dir=~/tensorflow_datasets --posters=/data/posters/ml1m --out=/tmp/ml1m

Then:  python -m cfimage.train --catalogue=/data/catalogues/movielens \\
           --unknown_interaction_items=keep --allow_outside_paths

Images are referenced by a path relative to the catalogue (`--image_mode=relpath`, default:
nothing is copied; keep the poster folder where it is), or symlinked / copied into
`<out>/images/` (`--image_mode=symlink|copy`). Relative paths and symlinks lead outside the
catalogue, which cfimage.train refuses without --allow_outside_paths; `copy` needs no flag.
"""

import argparse
import collections
import csv
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _prepare_common import (PrepareError, clean_label, log, run_main,  # noqa: E402
                             write_catalogue)

NO_GENRES = ("(no genres listed)", "unknown")
POSTER_EXTENSIONS = (".jpg", ".jpeg", ".png")
INTERACTION_COLUMNS = ("user_id", "item_id", "weight", "timestamp")


def _read_lines(path):
    """Lines of a GroupLens file: UTF-8, or ISO-8859-1 (ml-1m's movies.dat)."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    return text.splitlines()


def _number(value, path, line, column):
    try:
        return float(value)
    except ValueError:
        raise PrepareError(f"{path}, line {line}: {column} is {value!r}, not a number.") from None


def read_ratings(path, progress_every=1_000_000):
    """Yields (user_id, movie_id, rating, timestamp) from ratings.csv or ratings.dat."""
    dat = path.endswith(".dat")
    with open(path, encoding="utf-8", newline="") as f:
        if dat:
            rows = (line.rstrip("\r\n").split("::") for line in f)
        else:
            rows = csv.reader(f)
            header = [c.strip() for c in next(rows, [])]
            expected = ["userId", "movieId", "rating", "timestamp"]
            if header[:4] != expected:
                raise PrepareError(f"{path}, line 1: header is {header}; a MovieLens "
                                   f"ratings.csv starts with {expected}.")
        for number, row in enumerate(rows, start=1 if dat else 2):
            if not row or row == [""]:
                continue
            if len(row) != 4:
                raise PrepareError(
                    f"{path}, line {number}: {row!r} has {len(row)} field(s); expected 4 "
                    "(user, movie, rating, timestamp" + (", separated by '::')." if dat else ")."))
            user, movie, rating, timestamp = (v.strip() for v in row)
            value = _number(rating, path, number, "rating")
            if not value > 0:
                raise PrepareError(f"{path}, line {number}: rating {rating!r}; ratings must "
                                   "be > 0 (they become the interaction weight).")
            if not user or not movie:
                raise PrepareError(f"{path}, line {number}: empty user or movie id in {row!r}.")
            if progress_every and number % progress_every == 0:
                log(f"  ratings: {number} lines read")
            yield user, movie, rating, timestamp


def read_movies(path):
    """{movieId: [genres]} from movies.csv or movies.dat ("(no genres listed)" -> [])."""
    genres = {}
    if path.endswith(".dat"):
        rows = enumerate((line.split("::") for line in _read_lines(path)), start=1)
    else:
        rows = enumerate(csv.reader(_read_lines(path)), start=1)
        next(rows, None)  # header movieId,title,genres
    for number, row in rows:
        if not row or row == [""]:
            continue
        if len(row) < 3:
            raise PrepareError(f"{path}, line {number}: {row!r} has {len(row)} field(s); "
                               "expected movieId, title, genres.")
        movie_id = row[0].strip()
        names = [clean_label(g) for g in row[-1].strip().split("|")]
        genres[movie_id] = [g for g in names if g and g not in NO_GENRES]
    if not genres:
        raise PrepareError(f"{path}: no movies.")
    return genres


def read_links(path):
    """{movieId: imdbId without "tt" and leading zeros} from links.csv."""
    links = {}
    for number, row in enumerate(csv.DictReader(_read_lines(path)), start=2):
        if "movieId" not in row or "imdbId" not in row:
            raise PrepareError(f"{path}: needs columns movieId and imdbId.")
        links[row["movieId"].strip()] = _normalise_imdb(row["imdbId"])
    return links


def _normalise_imdb(value):
    value = value.strip().lower()
    value = value[2:] if value.startswith("tt") else value
    return value.lstrip("0") or "0"


def find_posters(folder, by_imdb):
    """{id: file name} of the posters in `folder` (`<id>.jpg|.jpeg|.png`)."""
    if not os.path.isdir(folder):
        raise PrepareError(f"poster folder not found: {folder}")
    posters = {}
    for name in sorted(os.listdir(folder)):
        stem, extension = os.path.splitext(name)
        if extension.lower() in POSTER_EXTENSIONS and os.path.isfile(os.path.join(folder, name)):
            posters.setdefault(_normalise_imdb(stem) if by_imdb else stem, name)
    if not posters:
        raise PrepareError(f"{folder}: no poster files (<id>.jpg, .jpeg or .png).")
    return posters


def read_tfds_ratings(name, data_dir):
    """(ratings, {movie_id: [genres]}) from a locally prepared TFDS `movielens/*-ratings`."""
    import tensorflow_datasets as tfds
    try:
        builder = tfds.builder(name, data_dir=data_dir)
        if not builder.is_prepared():
            raise PrepareError(f"TFDS dataset {name} is not prepared in {builder.data_dir}; "
                               "run tfds.builder(...).download_and_prepare() where there is "
                               "internet access, or use --ratings with GroupLens files.")
        dataset = builder.as_dataset(split="train")
        genre_names = builder.info.features["movie_genres"].feature.names
    except tfds.core.registered.DatasetNotFoundError as error:
        raise PrepareError(f"--tfds_name={name}: {error}") from error
    ratings, genres = [], {}
    for example in tfds.as_numpy(dataset):
        movie = example["movie_id"].decode()
        ratings.append((example["user_id"].decode(), movie, str(example["user_rating"]),
                        str(int(example["timestamp"]))))
        genres[movie] = [clean_label(genre_names[g]) for g in example["movie_genres"]
                         if genre_names[g] not in NO_GENRES]
    return ratings, genres


def place_image(source, out_dir, mode):
    """The image path written into items.csv (relative to out_dir)."""
    if mode == "relpath":
        return os.path.relpath(source, out_dir)
    target = os.path.join(out_dir, "images", os.path.basename(source))
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if os.path.lexists(target):
        os.remove(target)
    if mode == "symlink":
        os.symlink(os.path.abspath(source), target)
    else:
        shutil.copyfile(source, target)
    return os.path.relpath(target, out_dir)


def prepare(args):
    """Writes the catalogue; returns a dict of counts."""
    out_dir = os.path.abspath(args.out)
    if args.tfds_name:
        ratings, genres = read_tfds_ratings(args.tfds_name, args.tfds_data_dir)
    else:
        if not args.ratings:
            raise PrepareError("pass --ratings (GroupLens ratings.csv/.dat) or --tfds_name.")
        if not os.path.isfile(args.ratings):
            raise PrepareError(f"ratings file not found: {args.ratings}")
        movies = args.movies or os.path.join(
            os.path.dirname(args.ratings), "movies" + os.path.splitext(args.ratings)[1])
        if not os.path.isfile(movies):
            raise PrepareError(f"movies file not found: {movies} (pass --movies)")
        genres = read_movies(movies)
        ratings = read_ratings(args.ratings, args.progress_every)

    by_imdb = args.poster_id == "imdbId"
    posters = find_posters(args.posters, by_imdb)
    if by_imdb:
        links_path = args.links or os.path.join(os.path.dirname(args.ratings or ""), "links.csv")
        if not os.path.isfile(links_path):
            raise PrepareError(f"--poster_id=imdbId needs links.csv; not found: {links_path} "
                               "(pass --links)")
        links = read_links(links_path)
        poster_of = {m: posters[links[m]] for m in genres if links.get(m) in posters}
    else:
        poster_of = {m: posters[m] for m in genres if m in posters}

    # Labels: genres of the items with a poster; rare genres (e.g. IMAX) dropped.
    label_counts = collections.Counter(g for m in poster_of for g in set(genres[m]))
    rare = sorted(g for g, n in label_counts.items() if n < args.min_label_count)
    os.makedirs(out_dir, exist_ok=True)
    items = []
    for number, movie in enumerate(sorted(poster_of, key=_sort_key), start=1):
        labels = sorted(g for g in set(genres[movie]) if g not in rare)
        image = place_image(os.path.join(args.posters, poster_of[movie]), out_dir,
                            args.image_mode)
        items.append((movie, image, labels))
        if args.progress_every and number % args.progress_every == 0:
            log(f"  items: {number} written")
    if not items:
        raise PrepareError(f"no movie of the movies file has a poster in {args.posters} "
                           f"(posters named by {args.poster_id}; is that the right flag?)")

    # Ratings: all of them are written (streamed: ml-10m has 10M), also those on movies
    # without a poster; the counts are taken on the way.
    counts = collections.Counter()
    rated, users = set(), set()

    def counted(rows):
        for user, movie, rating, timestamp in rows:
            users.add(user)
            counts["ratings"] += 1
            if movie in poster_of:
                rated.add(movie)
                counts["ratings_on_items_with_poster"] += 1
            else:
                counts["ratings_on_items_without_poster"] += 1
            yield user, movie, rating, timestamp

    write_catalogue(out_dir, items, counted(ratings), INTERACTION_COLUMNS)
    if not counts["ratings"]:
        raise PrepareError("no ratings read.")

    counts.update({
        "movies": len(genres), "posters": len(posters), "items_with_poster": len(items),
        "items_with_poster_rated": len(rated),
        "unlabelled_items": sum(1 for _, _, labels in items if not labels),
        "labels": len(label_counts) - len(rare), "users": len(users),
    })
    counts["dropped_labels"] = rare
    return counts


def _sort_key(movie_id):
    return (0, int(movie_id), "") if movie_id.isdigit() else (1, 0, movie_id)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ratings", help="ratings.csv or ratings.dat (GroupLens)")
    parser.add_argument("--movies", help="movies.csv / movies.dat (default: next to --ratings)")
    parser.add_argument("--links", help="links.csv, for --poster_id=imdbId "
                        "(default: next to --ratings)")
    parser.add_argument("--tfds_name", help="instead of --ratings: a locally prepared TFDS "
                        "dataset, e.g. movielens/1m-ratings")
    parser.add_argument("--tfds_data_dir", help="TFDS data_dir for --tfds_name")
    parser.add_argument("--posters", required=True, help="folder of <id>.jpg/.png posters")
    parser.add_argument("--poster_id", choices=("movieId", "imdbId"), default="movieId",
                        help="which id names the poster files")
    parser.add_argument("--out", required=True, help="catalogue directory to write")
    parser.add_argument("--image_mode", choices=("relpath", "symlink", "copy"),
                        default="relpath", help="how items.csv points at the posters")
    parser.add_argument("--min_label_count", type=int, default=1,
                        help="drop genres with fewer items with a poster than this")
    parser.add_argument("--progress_every", type=int, default=1_000_000,
                        help="log progress every N ratings / items (0 = never)")
    return parser.parse_args(argv)


def main(argv=None):
    return run_main("prepare_movielens", prepare, parse_args(argv))


if __name__ == "__main__":
    main()
