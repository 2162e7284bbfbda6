"""scripts/prepare_movielens.py on tiny GroupLens-format fixtures (.dat and .csv)."""

import csv
import os
import sys

import numpy as np
import pytest

from cfimage.catalogue.reader import CatalogueSpec, load_catalogue
from tests.scripts.test_prepare_common import SCRIPTS, png_bytes

if SCRIPTS not in sys.path:
    sys.path.insert(0, SCRIPTS)

import prepare_movielens  # noqa: E402
from _prepare_common import PrepareError  # noqa: E402

# relpath and symlink catalogues lead to the posters outside the catalogue.
KEEP = CatalogueSpec(unknown_interaction_items="keep", allow_outside_paths=True)


def _rows(path):
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.reader(f))


def _posters(folder, names):
    os.makedirs(folder, exist_ok=True)
    for name in names:
        with open(os.path.join(folder, name), "wb") as f:
            f.write(png_bytes())


def _ml1m(tmp_path):
    """ml-1m layout: '::'-separated, movies.dat in ISO-8859-1."""
    data = tmp_path / "ml-1m"
    data.mkdir()
    (data / "ratings.dat").write_text(
        "1::10::5::978300760\n1::20::3::978302109\n2::10::4::978301968\n"
        "2::30::2::978300275\n3::40::1::978824291\n3::20::5::978824291\n")
    (data / "movies.dat").write_bytes(
        "10::Amélie (2001)::Comedy|Romance\n20::Heat (1995)::Action|Crime|IMAX\n"
        "30::Nothing (2000)::(no genres listed)\n40::No Poster (1999)::Drama\n"
        "50::Unrated (1990)::Comedy|Drama\n".encode("latin-1"))
    _posters(tmp_path / "posters", ["10.jpg", "20.png", "30.jpg", "50.jpg", "999.jpg",
                                    "notes.txt"])
    return data


def test_ml1m_dat_files(tmp_path):
    data = _ml1m(tmp_path)
    out = tmp_path / "catalogue"
    counts = prepare_movielens.main([
        f"--ratings={data / 'ratings.dat'}", f"--posters={tmp_path / 'posters'}",
        f"--out={out}", "--min_label_count=2"])
    # Genre counts over items with a poster: Comedy 2, Action 1, Crime 1, IMAX 1, Romance 1,
    # Drama 1 (movie 40 has no poster): with min_label_count=2 only Comedy survives.
    assert _rows(out / "items.csv") == [
        ["item_id", "image", "labels"],
        ["10", "../posters/10.jpg", "Comedy"],
        ["20", "../posters/20.png", ""],
        ["30", "../posters/30.jpg", ""],
        ["50", "../posters/50.jpg", "Comedy"],
    ]
    interactions = _rows(out / "interactions.csv")
    assert interactions[0] == ["user_id", "item_id", "weight", "timestamp"]
    assert interactions[1] == ["1", "10", "5", "978300760"] and len(interactions) == 7
    assert counts["ratings"] == 6 and counts["ratings_on_items_without_poster"] == 1
    assert counts["items_with_poster"] == 4 and counts["items_with_poster_rated"] == 3
    assert counts["dropped_labels"] == ["Action", "Crime", "Drama", "IMAX", "Romance"]

    catalogue = load_catalogue(str(out), KEEP)
    assert catalogue.label_names == ["Comedy"]
    assert list(catalogue.labelled) == [True, False, False, True]
    assert len(catalogue.interactions) == 6  # the rating of movie 40 (no poster) is kept
    assert os.path.isfile(catalogue.image_paths[1])


def test_csv_files_with_imdb_posters_copied(tmp_path):
    data = tmp_path / "ml-latest-small"
    data.mkdir()
    (data / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,2,0.5,964981247\n"
        "2,2,3.5,964982224\n")
    (data / "movies.csv").write_text(
        'movieId,title,genres\n1,"Toy Story, The (1995)",Adventure|Children\n'
        "2,Jumanji (1995),Adventure\n")
    (data / "links.csv").write_text("movieId,imdbId,tmdbId\n1,0114709,862\n2,0113497,8844\n")
    _posters(tmp_path / "imdb", ["tt0114709.jpg", "113497.png"])
    out = tmp_path / "catalogue"
    counts = prepare_movielens.main([
        f"--ratings={data / 'ratings.csv'}", f"--posters={tmp_path / 'imdb'}",
        "--poster_id=imdbId", f"--out={out}", "--image_mode=copy"])
    assert _rows(out / "items.csv")[1:] == [["1", "images/tt0114709.jpg", "Adventure|Children"],
                                            ["2", "images/113497.png", "Adventure"]]
    assert not os.path.islink(out / "images" / "113497.png")
    assert counts["ratings_on_items_with_poster"] == 3 and counts["users"] == 2
    catalogue = load_catalogue(str(out))  # every rating is on an item: the default policy works
    assert catalogue.multi_label and list(catalogue.interactions.weight) == [4.0, 0.5, 3.5]

    prepare_movielens.main([f"--ratings={data / 'ratings.csv'}", f"--posters={tmp_path / 'imdb'}",
                            "--poster_id=imdbId", f"--out={out}", "--image_mode=symlink"])
    assert os.path.islink(out / "images" / "113497.png")
    assert load_catalogue(str(out), CatalogueSpec(allow_outside_paths=True)).num_items == 2


@pytest.mark.parametrize("name, text, message", [
    ("ratings.dat", "1::10::5::978300760\n1::20::5\n", r"ratings.dat, line 2: .* 3 field"),
    ("ratings.csv", "userId,movieId,rating,timestamp\n1,10,five,1\n",
     r"ratings.csv, line 2: rating is 'five'"),
    ("ratings.csv", "userId,movieId,rating,timestamp\n1,10,0,1\n", r"line 2: rating '0'"),
    ("ratings.csv", "user,movie,rating\n1,10,4\n", r"ratings.csv, line 1: header"),
])
def test_malformed_ratings_name_file_and_line(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    extension = os.path.splitext(name)[1]
    (tmp_path / f"movies{extension}").write_text(
        "10::A (1990)::Drama\n" if extension == ".dat" else "movieId,title,genres\n10,A,Drama\n")
    _posters(tmp_path / "posters", ["10.jpg"])
    with pytest.raises(PrepareError, match=message):
        prepare_movielens.prepare(prepare_movielens.parse_args([
            f"--ratings={tmp_path / name}", f"--posters={tmp_path / 'posters'}",
            f"--out={tmp_path / 'out'}"]))


def test_no_matching_posters_is_a_clear_error(tmp_path):
    data = _ml1m(tmp_path)
    (tmp_path / "links.csv").write_text("movieId,imdbId,tmdbId\n10,0000001,5\n")
    with pytest.raises(SystemExit, match="no movie of the movies file has a poster"):
        prepare_movielens.main([f"--ratings={data / 'ratings.dat'}",
                                f"--posters={tmp_path / 'posters'}", "--poster_id=imdbId",
                                f"--links={tmp_path / 'links.csv'}", f"--out={tmp_path}/o"])


def test_tfds_ratings_source(tmp_path, monkeypatch):
    """--tfds_name reads a prepared TFDS movielens/*-ratings (faked here: same features)."""
    import types

    import tensorflow as tf
    import tensorflow_datasets as tfds

    genre_names = ["Action", "Comedy", "(no genres listed)"]
    examples = {"movie_id": [b"1", b"2", b"7"], "user_id": [b"u1", b"u2", b"u1"],
                "user_rating": np.array([4.0, 2.0, 5.0], np.float32),
                "timestamp": np.array([10, 11, 12], np.int64),
                "movie_genres": tf.ragged.constant([[0, 1], [2], [1]], dtype=tf.int64)}
    features = {"movie_genres": types.SimpleNamespace(
        feature=types.SimpleNamespace(names=genre_names))}
    fake = types.SimpleNamespace(
        is_prepared=lambda: True, data_dir=str(tmp_path),
        as_dataset=lambda split: tf.data.Dataset.from_tensor_slices(examples),
        info=types.SimpleNamespace(features=features))
    monkeypatch.setattr(tfds, "builder", lambda name, data_dir=None: fake)
    _posters(tmp_path / "posters", ["1.jpg", "2.jpg"])
    counts = prepare_movielens.main(["--tfds_name=movielens/1m-ratings",
                                     f"--posters={tmp_path / 'posters'}",
                                     f"--out={tmp_path / 'out'}"])
    assert _rows(tmp_path / "out" / "items.csv")[1:] == [
        ["1", "../posters/1.jpg", "Action|Comedy"], ["2", "../posters/2.jpg", ""]]
    assert _rows(tmp_path / "out" / "interactions.csv")[1] == ["u1", "1", "4.0", "10"]
    assert counts["ratings_on_items_without_poster"] == 1
    assert load_catalogue(str(tmp_path / "out"), KEEP).num_items == 2
