"""Stage-1 quality on MovieLens: held-out recall@10 and a genre probe of the item vectors.

    python scripts/stage1_quality.py --data=/work/shared/data/movielens_posters [--out=q.json]

(from the repository root with cfimage installed). Runtime: about 1 minute on 2 CPU cores with
the default TwoTowerConfig. Results: docs/results/stage1_movielens.md.

What it does, with ratings.csv as the log (user_id = userId, item_id = movieId, weight = rating)
and the catalogue = items.csv movieIds (genres from items.csv, IMAX dropped):
  1. `train_two_tower` with the default TwoTowerConfig (or the overrides given by flags):
     held-out recall@10 of the two-tower, truncated SVD and popularity, then the refit on all
     ratings;
  2. a genre probe (baselines.genre_probe: one-vs-rest logistic regression, seeded 70/30 item
     split, test macro mAP) on the two-tower item vectors, on truncated-SVD item factors of the
     whole log, and on random vectors;
  3. optionally (--svd_ranks) held-out recall of the SVD baseline for several ranks, and
     (--grid) a tuning sweep: one held-out fit per row (no refit), over a grid of TwoTowerConfig
     fields, e.g. --grid=temperature=0.5,1 --grid=epochs=5,10 (all combinations).
"""

import dataclasses
import itertools
import json
import os
import time

import cfimage  # noqa: F401  (sets the environment before TensorFlow is imported)
import numpy as np
import pandas as pd
from absl import app, flags

from cfimage.stage1 import baselines, memory
from cfimage.stage1 import two_tower as ce

FLAGS = flags.FLAGS
flags.DEFINE_string("data", "../shared/data/movielens_posters",
                    "Folder with ratings.csv and items.csv (movielens_posters layout).")
flags.DEFINE_multi_string("set", [], "Override of a TwoTowerConfig field for the main run, "
                          "name=value (repeatable), e.g. --set=epochs=10.")
flags.DEFINE_multi_string("grid", [], "Sweep axis name=v1,v2,... (repeatable); rows are all "
                          "combinations, each one held-out fit with the main config otherwise.")
flags.DEFINE_list("svd_ranks", [], "Ranks of the SVD-baseline sweep (held-out recall only).")
flags.DEFINE_bool("main", True, "Run the main stage-1 run and the genre probe.")
flags.DEFINE_string("out", None, "If set, also write all results as JSON to this path.")

DROPPED_GENRES = ("IMAX", "(no genres listed)")


def load(data):
    ratings = pd.read_csv(os.path.join(data, "ratings.csv"))
    interactions = pd.DataFrame({"user_id": ratings["userId"].astype(str),
                                 "item_id": ratings["movieId"].astype(str),
                                 "weight": ratings["rating"].astype(float)})
    items = pd.read_csv(os.path.join(data, "items.csv"))
    genre_lists = [[g for g in str(text).split("|") if g not in DROPPED_GENRES]
                   for text in items["genres"]]
    names = sorted({g for genres in genre_lists for g in genres})
    labels = np.array([[name in genres for name in names] for genres in genre_lists], bool)
    return interactions, items["movieId"].astype(str).to_numpy(), labels, names


def parse_value(field, text):
    kind = type(getattr(ce.TwoTowerConfig(), field))
    if text.lower() == "none":
        return None
    if kind is bool:
        return text.lower() in ("1", "true", "yes")
    if field == "min_rating":
        return float(text)
    return kind(text)


def parse_assignment(text):
    name, _, values = text.partition("=")
    if name not in {f.name for f in dataclasses.fields(ce.TwoTowerConfig)} or not values:
        raise app.UsageError(f"{text!r}: expected name=value(s) with name a TwoTowerConfig "
                             f"field ({[f.name for f in dataclasses.fields(ce.TwoTowerConfig)]})")
    return name, [parse_value(name, v) for v in values.split(",")]


def svd_rank_sweep(interactions, config, ranks):
    """Held-out recall@k of the SVD baseline per rank, on train_two_tower's split (all users
    with held-out pairs: the whole sample of a log this size)."""
    known, heldout = memory.split_holdout(interactions, config.holdout_fraction, config.seed)
    fitted = known if config.min_rating is None else known[known["weight"] >= config.min_rating]
    users = np.array(sorted(fitted["user_id"].unique()))
    items = np.array(sorted(fitted["item_id"].unique()))
    eval_users, known_items, heldout_items = baselines.holdout_lists(known, heldout, items)
    matrix = baselines.binary_matrix(
        fitted["user_id"].map({u: i for i, u in enumerate(users)}),
        fitted["item_id"].map({m: j for j, m in enumerate(items)}), len(users), len(items))
    rows = np.searchsorted(users, eval_users)
    out = []
    for rank in ranks:
        start = time.time()
        user_factors, item_factors = baselines.svd_factors(matrix, rank, config.seed)
        recall = baselines.recall_at_k(lambda r: user_factors[rows[r]] @ item_factors.T,
                                       known_items, heldout_items, config.recall_k)
        out.append({"svd_rank": rank, f"svd_recall@{config.recall_k}": recall,
                    "seconds": time.time() - start})
        print(f"svd rank {rank:4d}: recall@{config.recall_k} {recall:.4f} "
              f"({out[-1]['seconds']:.1f}s)", flush=True)
    return out


def main(argv):
    del argv
    interactions, catalogue, labels, genre_names = load(FLAGS.data)
    config = ce.TwoTowerConfig()
    for text in FLAGS.set:
        name, values = parse_assignment(text)
        setattr(config, name, values[0])
    k = config.recall_k
    print(f"{len(interactions)} ratings, {interactions['user_id'].nunique()} users, "
          f"{interactions['item_id'].nunique()} rated movies; catalogue {len(catalogue)} items, "
          f"{len(genre_names)} genres\nconfig: {config}", flush=True)
    results = {"config": dataclasses.asdict(config)}

    if FLAGS.svd_ranks:
        results["svd_ranks"] = svd_rank_sweep(interactions, config,
                                              [int(r) for r in FLAGS.svd_ranks])

    if FLAGS.main:
        start = time.time()
        result = memory.train_two_tower(interactions, catalogue, config)
        seconds = time.time() - start
        m = result.metrics
        print(f"\n| model | recall@{k} |\n| --- | --- |\n"
              f"| two-tower | {m[f'recall@{k}']:.3f} |\n| SVD (rank {m['svd_rank']}) | "
              f"{m[f'svd_recall@{k}']:.3f} |\n| popularity | {m[f'popularity_recall@{k}']:.3f} |"
              f"\nstage 1 total {seconds:.1f}s (held-out part {m['holdout_seconds']:.1f}s, "
              f"SVD {m['svd_seconds']:.2f}s, full refit {m['full_fit_seconds']:.1f}s)")

        # Genre probe on the catalogue items that have a CF vector and at least one genre.
        keep = result.has_vector & labels.any(axis=1)
        log_items = np.array(sorted(interactions["item_id"].unique()))
        users = np.array(sorted(interactions["user_id"].unique()))
        matrix = baselines.binary_matrix(
            np.searchsorted(users, interactions["user_id"]),
            np.searchsorted(log_items, interactions["item_id"]), len(users), len(log_items))
        _, svd_items = baselines.svd_factors(matrix, config.svd_rank, config.seed)
        svd_vectors = svd_items[np.searchsorted(log_items, result.item_ids[keep])]
        random_vectors = np.random.default_rng(config.seed).normal(
            size=(int(keep.sum()), config.embedding_dim))
        probes = {}
        print(f"\ngenre probe: {int(keep.sum())} items, {len(genre_names)} genres, 70/30 split"
              f"\n| item vectors | dim | test macro mAP |\n| --- | --- | --- |")
        for name, vectors in [("two-tower", result.vectors[keep]),
                              (f"SVD factors (rank {svd_items.shape[1]})", svd_vectors),
                              ("random", random_vectors)]:
            probes[name] = baselines.genre_probe(vectors, labels[keep], seed=config.seed)
            print(f"| {name} | {vectors.shape[1]} | {probes[name]['map']:.3f} |", flush=True)
        results.update({"metrics": m, "seconds": seconds, "probe": probes})

    if FLAGS.grid:
        axes = [parse_assignment(text) for text in FLAGS.grid]
        names = [name for name, _ in axes]
        print(f"\nsweep ({np.prod([len(v) for _, v in axes])} rows, held-out fit only)\n"
              f"| {' | '.join(names)} | two-tower | SVD | popularity | seconds |\n"
              f"|{' --- |' * (len(names) + 4)}", flush=True)
        rows = []
        for values in itertools.product(*[v for _, v in axes]):
            row_config = dataclasses.replace(config, **dict(zip(names, values)))
            start = time.time()
            m = memory.holdout_metrics(interactions, row_config, log=lambda s: None)
            seconds = time.time() - start
            rows.append({**dict(zip(names, values)), **m, "seconds": seconds})
            print(f"| {' | '.join(str(v) for v in values)} | {m[f'recall@{k}']:.3f} | "
                  f"{m[f'svd_recall@{k}']:.3f} | {m[f'popularity_recall@{k}']:.3f} | "
                  f"{seconds:.0f} |", flush=True)
        results["sweep"] = rows

    if FLAGS.out:
        with open(FLAGS.out, "w") as f:
            json.dump(results, f, indent=2, default=float)


if __name__ == "__main__":
    app.run(main)
