"""Cold start, measured: the rankings and figures of `python -m cfimage.coldstart`.

A test item of a run is cold for the image model: stage 2 never trained on it. Its image gives
a predicted CF vector (the export's `embed`), and the export ranks with it:

  audience       users by predicted vector · user vector. recall@K = the share of the item's
                 real raters (the users with a row on it in the interaction log, among the
                 users of the table) found in the top K. Against two rankings of the same
                 users: popularity (most training-item interactions first: the cold-start
                 default) and the ceiling, the item's own stage-1 vector · user vector.
  similar_items  catalogue items (the export's table: every item with a CF vector, the item
                 itself left out) by predicted vector · item vector. Judged by label overlap
                 (the share of the k neighbours that share a label with the item) and
                 CF-neighbour recall@k (the share of the item's k nearest items by its own
                 stage-1 vector that are among them).

The scores are dot products, as the export's signatures rank (cfimage/serving/tables.py,
top_k_by_dot); the image-embedding neighbours, features never trained for dot products, use
cosine. Ties go to the lower row, as tf.math.top_k breaks them.

numpy only; cfimage/experiments/coldstart_runs.py reads the runs, cfimage/coldstart.py is the
command.
"""

import numpy as np
import pandas as pd

from cfimage.experiments.report import mean_ci

CHUNK_SCORES = 1 << 24  # query x table scores held at once (64 MiB of float32)

# Figure name -> its column title in the report, in the report's order (docs/experiments.md,
# "Cold start" says what each is).
FIGURES = {
    "audience_model": "audience recall@{K}: model",
    "audience_popularity": "popularity",
    "audience_ceiling": "ceiling (own stage-1 vector)",
    "audience_model_minus_popularity": "model − popularity (paired)",
    "similar_model_labels": "similar@{k} by predicted vector: label overlap",
    "similar_model_cf": "by predicted vector: CF-neighbour recall",
    "similar_image_labels": "by image embedding (image_only): label overlap",
    "similar_image_cf": "by image embedding: CF-neighbour recall",
    "similar_true_labels": "true CF neighbours: label overlap",
    "similar_chance_labels": "chance: label overlap",
}


def top_k(queries, table, k, exclude=None, cosine=False):
    """(n, k) rows of `table` (m, d) in decreasing score with each of `queries` (n, d), best
    first; ties to the lower row. Scores are dot products (`cosine`: of the unit vectors; a
    zero vector scores 0). `exclude`: (n,) a row of the table to leave out for each query
    (-1: none), e.g. the query item itself. k is capped at the rows a query can get."""
    queries = np.asarray(queries, np.float32)
    table = np.asarray(table, np.float32)
    if cosine:
        queries, table = _unit(queries), _unit(table)
    exclude = None if exclude is None else np.asarray(exclude, np.int64)
    k = min(int(k), len(table) - int(exclude is not None and (exclude >= 0).any()))
    if k < 1:
        raise ValueError(f"top_k: a table of {len(table)} rows has none to rank")
    step = max(1, CHUNK_SCORES // max(len(table), 1))
    ranked = np.empty((len(queries), k), np.int64)
    for start in range(0, len(queries), step):
        scores = queries[start:start + step] @ table.T
        if exclude is not None:
            rows = exclude[start:start + step]
            left_out = np.flatnonzero(rows >= 0)
            scores[left_out, rows[left_out]] = -np.inf
        ranked[start:start + step] = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return ranked


def _unit(vectors):
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.where(norms > 0, vectors / np.where(norms > 0, norms, 1.0), 0.0).astype(np.float32)


def recall(ranked, relevant):
    """(n,) share of each query's `relevant` rows (a list of n arrays, none empty) that its
    row of `ranked` (n, k) holds: |top k ∩ relevant| / |relevant|."""
    return np.array([np.isin(np.asarray(rows), top).mean() for top, rows in
                     zip(ranked, relevant)], np.float64)


def label_overlap(neighbours, query_labels, table_labels):
    """(n,) share of each query's neighbours (rows of the table, (n, k)) that share at least
    one label with it. `query_labels` (n, C), `table_labels` (m, C): multi-hot; an item without
    labels shares none."""
    query = np.asarray(query_labels) > 0
    shared = (np.asarray(table_labels) > 0)[neighbours] & query[:, None, :]
    return shared.any(axis=2).mean(axis=1)


def chance_label_overlap(query_labels, table_labels, exclude):
    """(n,) the expected label_overlap of neighbours drawn at random from the table: the share
    of the table's rows (the query's own row `exclude`, -1 for none, left out) that share a
    label with the query."""
    table = np.asarray(table_labels) > 0
    sharing = (np.asarray(query_labels) > 0).astype(np.int64) @ table.T.astype(np.int64) > 0
    exclude = np.asarray(exclude, np.int64)
    own = np.flatnonzero(exclude >= 0)
    counts = sharing.sum(axis=1).astype(np.float64)
    counts[own] -= sharing[own, exclude[own]]
    return counts / (len(table) - (exclude >= 0))


def neighbour_recall(neighbours, true_neighbours):
    """(n,) share of each query's `true_neighbours` (n, k) found among its `neighbours`."""
    return recall(neighbours, list(true_neighbours))


def raters(interactions, item_ids, user_ids):
    """For each of `item_ids`: the rows of `user_ids` (the user table) with at least one
    interaction on it, as sorted int arrays. `interactions`: a frame with user_id, item_id."""
    row_of_user = pd.Series(np.arange(len(user_ids)), index=pd.Index(np.asarray(user_ids)))
    pairs = interactions[["user_id", "item_id"]]
    pairs = pairs[pairs.item_id.isin(set(item_ids)) & pairs.user_id.isin(row_of_user.index)]
    by_item = pairs.assign(row=row_of_user.reindex(pairs.user_id).to_numpy()).groupby(
        "item_id")["row"].apply(lambda rows: np.unique(rows.to_numpy(np.int64)))
    empty = np.zeros(0, np.int64)
    return [by_item.get(item, empty) for item in item_ids]


def popularity_ranking(interactions, train_item_ids, user_ids):
    """The rows of `user_ids` by the number of distinct training items each interacted with,
    most first (ties to the lower row): the audience a cold item gets without a model."""
    pairs = interactions.loc[interactions.item_id.isin(set(train_item_ids)),
                             ["user_id", "item_id"]].drop_duplicates()
    counts = pairs.user_id.value_counts().reindex(np.asarray(user_ids), fill_value=0)
    return np.argsort(-counts.to_numpy(), kind="stable")


def summarise(per_run, groups):
    """The report's rows: for each group (a list of run names) and figure, the mean and 95%
    t-interval over the test items of its one run, or over the per-run means of several runs
    (seeds). `per_run`: {run name: {figure: (n,) per-item values}}; a figure a run lacks is
    left out. Returns a DataFrame: group, figure, mean, ci_low, ci_high, n, over."""
    rows = []
    for group, names in groups.items():
        figures = [f for f in FIGURES if any(f in per_run[name] for name in names)]
        for figure in figures:
            values = [np.asarray(per_run[name][figure], np.float64) for name in names
                      if figure in per_run[name]]
            if len(values) == 1:
                sample, over = values[0], "test items"
            else:
                sample, over = np.array([v.mean() for v in values]), "runs"
            if len(sample) == 0:
                continue
            mean, half = mean_ci(sample)
            rows.append({"group": group, "figure": figure, "mean": mean, "ci_low": mean - half,
                         "ci_high": mean + half, "n": len(sample), "over": over})
    return pd.DataFrame(rows, columns=["group", "figure", "mean", "ci_low", "ci_high", "n",
                                       "over"])


def markdown_table(summary, groups, audience_k, neighbours_k):
    """The summary as one markdown table: a row per group (`groups`: name -> run names), a
    column per figure, each cell "mean [95% CI]"; the interval is over the group's test items
    (one run) or its runs (several)."""
    figures = [f for f in FIGURES if f in set(summary.figure)]
    titles = [FIGURES[f].format(K=audience_k, k=neighbours_k) for f in figures]
    lines = ["| runs | CI over | " + " | ".join(titles) + " |",
             "| --- | --- |" + " --- |" * len(figures)]
    for group, rows in summary.groupby("group", sort=False):
        by_figure = rows.set_index("figure")
        count = len(groups[group])
        cells = [f"{group} ({count} run{'s' if count > 1 else ''})", rows.iloc[0].over]
        for figure in figures:
            if figure not in by_figure.index:
                cells.append("—")
                continue
            row = by_figure.loc[figure]
            interval = ("" if np.isnan(row.ci_low) or row.ci_low == row.ci_high
                        else f" [{row.ci_low:.3f}, {row.ci_high:.3f}]")
            cells.append(f"{row['mean']:.3f}{interval}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
