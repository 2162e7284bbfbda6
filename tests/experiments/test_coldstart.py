"""Cold start, measured: the rankings and figures on hand-worked examples
(cfimage/experiments/coldstart.py), a finished run read back (coldstart_runs.py), and the
command end to end on a tiny demo run (cfimage/coldstart.py)."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from cfimage.errors import UserError
from cfimage.experiments import coldstart as measures
from cfimage.experiments import coldstart_runs

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
T_975 = {1: 12.706204736174705, 2: 4.302652729911275}  # Student t quantiles (any t table)


# --- The measures, by hand ------------------------------------------------------------------

def test_top_k_ranks_by_dot_product_leaves_out_a_row_and_breaks_ties_to_the_lower_row():
    table = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    # scores of [2, 1]: 2, 1, 3
    assert measures.top_k([[2.0, 1.0]], table, 2).tolist() == [[2, 0]]
    assert measures.top_k([[2.0, 1.0]], table, 2, exclude=[2]).tolist() == [[0, 1]]
    assert measures.top_k([[2.0, 1.0]], table, 5, exclude=[-1]).tolist() == [[2, 0, 1]]
    assert measures.top_k([[1.0, 1.0]], table[:2], 2).tolist() == [[0, 1]]  # a tie
    # Many queries at once, chunked (1 query per chunk here), give the same rows.
    queries = np.array([[2.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    whole = measures.top_k(queries, table, 2, exclude=[2, -1, 0])
    old = measures.CHUNK_SCORES
    try:
        measures.CHUNK_SCORES = 1
        assert measures.top_k(queries, table, 2, exclude=[2, -1, 0]).tolist() == \
            whole.tolist() == [[0, 1], [1, 2], [2, 1]]
    finally:
        measures.CHUNK_SCORES = old


def test_top_k_cosine_ignores_length():
    table = np.array([[10.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    query = [[1.0, 0.9]]
    assert measures.top_k(query, table, 1).tolist() == [[0]]  # dot: 10 against 1.9
    # cosine: 1 / 1.345 = 0.743 against 1.9 / (1.345 * 1.414) = 0.999; the zero row scores 0
    assert measures.top_k(query, table, 3, cosine=True).tolist() == [[1, 0, 2]]


def test_recall_label_overlap_and_neighbour_recall():
    assert measures.recall([[0, 1, 2], [3, 4, 5]], [np.array([1, 5]), np.array([3])]
                           ).tolist() == [0.5, 1.0]
    # labels a, b: row 0 {a}, row 1 {b}, row 2 {a, b}, row 3 none
    table_labels = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    overlap = measures.label_overlap(np.array([[1, 2, 3], [0, 2, 3]]),
                                     np.array([[1, 0], [0, 1]]), table_labels)
    np.testing.assert_allclose(overlap, [1 / 3, 1 / 3])
    np.testing.assert_allclose(measures.neighbour_recall([[0, 1, 2]], [[2, 3, 4]]), [1 / 3])


def test_chance_label_overlap_leaves_the_item_itself_out():
    table_labels = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    # {a}, own row 0: rows 0 and 2 share a label; without row 0, 1 of 3 rows.
    # {b}, not in the table: rows 1 and 2 of 4.
    chance = measures.chance_label_overlap(np.array([[1, 0], [0, 1]]), table_labels, [0, -1])
    np.testing.assert_allclose(chance, [1 / 3, 2 / 4])


INTERACTIONS = pd.DataFrame({
    "user_id": ["u1", "u1", "u2", "u2", "u3", "u3", "u9"],
    "item_id": ["i1", "i1", "i1", "i2", "i2", "i3", "i1"]})


def test_raters_are_rows_of_the_user_table():
    # u9 is not in the table (stage 1 left it out): no ranking can find it.
    found = measures.raters(INTERACTIONS, ["i1", "i3", "i4"], np.array(["u1", "u2", "u3"]))
    assert [rows.tolist() for rows in found] == [[0, 1], [2], []]


def test_popularity_counts_distinct_training_items_per_user():
    # Training items i1, i2: u1 has 1 (its two rows on i1 are one item), u2 has 2, u3 has 1
    # (i3 is not a training item). Counting rows would tie u1 with u2.
    ranking = measures.popularity_ranking(INTERACTIONS, ["i1", "i2"],
                                          np.array(["u1", "u2", "u3"]))
    assert ranking.tolist() == [1, 0, 2]


def test_summary_is_over_the_items_of_one_run_or_the_means_of_several():
    per_run = {"a": {"audience_model": np.array([0.5, 1.0, 0.0])},
               "b": {"audience_model": np.array([0.6, 0.4]),
                     "audience_ceiling": np.array([1.0, 1.0])},
               "c": {"audience_model": np.array([0.8, 0.6])}}
    summary = measures.summarise(per_run, {"one": ["a"], "two": ["b", "c"]})
    one = summary[summary.group == "one"].iloc[0]
    # mean 0.5, sample sd 0.5 over 3 items: half-width t(2) * 0.5 / sqrt(3)
    assert (one.figure, one["mean"], one.n, one.over) == ("audience_model", 0.5, 3,
                                                          "test items")
    assert one.ci_high - 0.5 == pytest.approx(T_975[2] * 0.5 / np.sqrt(3))
    two = summary[(summary.group == "two") & (summary.figure == "audience_model")].iloc[0]
    # run means 0.5 and 0.7: mean 0.6, standard error 0.1
    assert (two["mean"], two.n, two.over) == (pytest.approx(0.6), 2, "runs")
    assert two.ci_high - two["mean"] == pytest.approx(T_975[1] * 0.1)
    ceiling = summary[summary.figure == "audience_ceiling"].iloc[0]
    assert (ceiling["mean"], ceiling.n, ceiling.over) == (1.0, 2, "test items")  # b only
    table = measures.markdown_table(summary, {"one": ["a"], "two": ["b", "c"]}, 50, 10)
    assert "| audience recall@50: model | ceiling (own stage-1 vector) |" in table
    assert "| one (1 run) | test items | 0.500 [" in table and "| — |" in table


def test_runs_that_are_not_finished_or_not_there_are_user_errors(tmp_path):
    with pytest.raises(UserError, match=r"matches no finished run \(0 folder"):
        coldstart_runs.find_runs([str(tmp_path / "cells" / "*")])
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    with pytest.raises(UserError, match="not a finished cfimage.train run .no metrics.json"):
        coldstart_runs.find_runs([str(tmp_path / "half")])
    with pytest.raises(UserError, match=r"matches no finished run \(1 folder"):
        coldstart_runs.find_runs([str(tmp_path / "ha*")])
    # A cell restored from its metrics.json alone has no model to measure.
    (tmp_path / "half" / "metrics.json").write_text("{}")
    with pytest.raises(UserError, match="neither serving_model.keras nor checkpoints/best"
                                        ".weights.h5: the trained model is gone"):
        coldstart_runs.find_runs([str(tmp_path / "ha*")])


# --- A tiny finished run, then the command on it ---------------------------------------------

# efficientnet_b0: its random initial weights (--weights=none) are the same in every process,
# so a model rebuilt from the checkpoint has the backbone the cached features came from.
TINY = ["--demo_items=120", "--demo_users=60", "--image_size=32", "--epochs=2",
        "--batch_size=16", "--cf_epochs=2", "--cf_dim=8", "--train_backbone=false",
        "--backbone=efficientnet_b0", "--weights=none", "--threads=1"]


def run_module(module, args, cwd):
    env = {**os.environ, "PYTHONPATH": os.path.abspath(ROOT)}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def image_only_run(tmp_path_factory):
    """A finished image_only run as an experiment leaves its cells: no export."""
    base = tmp_path_factory.mktemp("coldstart")
    result = run_module("cfimage.train", TINY + [
        "--arm=image_only", f"--workdir={base}/run", "--noexport"], cwd=str(base))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return base


@pytest.mark.slow
def test_the_command_measures_a_run_and_resumes(image_only_run):
    base = image_only_run
    (base / "running").mkdir(exist_ok=True)  # a run still training: the glob skips it
    args = [f"--runs={base}/ru*", f"--workdir={base}/out", "--audience_k=10",
            "--neighbours_k=5", "--threads=1"]
    result = run_module("cfimage.coldstart", args, cwd=str(base))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "[coldstart] run 1/1: run (image_only, labels 1, λ 0)" in result.stdout
    assert "skipped 1 folder(s) without a metrics.json (not finished)" in result.stdout

    summary = pd.read_csv(base / "out" / "coldstart.csv")
    assert list(summary.figure) == list(measures.FIGURES)  # image_only: every figure
    assert (summary.over == "test items").all()
    means = summary.set_index("figure")["mean"]
    assert means.drop("audience_model_minus_popularity").between(0, 1).all()
    assert means.audience_model_minus_popularity == pytest.approx(
        means.audience_model - means.audience_popularity)
    # The demo's users pick items of the classes they like: an item's own CF vector finds its
    # raters better than popularity, and its CF neighbours share labels more than chance.
    assert means.audience_ceiling > means.audience_popularity
    assert means.similar_true_labels > means.similar_chance_labels
    runs = pd.read_csv(base / "out" / "coldstart_runs.csv")
    run = runs.iloc[0]
    metrics = json.loads((base / "run" / "metrics.json").read_text())
    assert run.test_items == metrics["num_items"]["test"] >= run.audience_items > 0
    assert run.test_map_export == pytest.approx(metrics["test"]["macro_map"], abs=1e-4)
    assert run.audience_signature_agreement == run.similar_signature_agreement == 1.0
    report = (base / "out" / "coldstart.md").read_text()
    assert f"`python -m cfimage.coldstart {' '.join(args)}`" in report
    assert "| audience recall@10: model |" in report and "| image_only, labels 1, λ 0" in report

    again = run_module("cfimage.coldstart", args, cwd=str(base))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "measured before with these settings" in again.stdout
    assert pd.read_csv(base / "out" / "coldstart.csv").equals(summary)


def _copy(run_dir, target, metrics, users=True):
    """The finished run at `run_dir` with another metrics.json, in `target` (`users=False`:
    given stage 1's item vectors without its user vectors)."""
    target.mkdir()
    shutil.copy(run_dir / "config.json", target / "config.json")
    shutil.copytree(run_dir / "checkpoints", target / "checkpoints")
    (target / "metrics.json").write_text(json.dumps(metrics))
    config = json.loads((target / "config.json").read_text())
    # The run's own stage-1 files and demo catalogue stay where they are.
    config["catalogue"]["root"] = str(run_dir / "demo_catalogue")
    config["stage1"]["cf_embeddings"] = str(run_dir / "cf_embeddings.npz")
    config["stage1"]["cf_user_embeddings"] = (str(run_dir / "user_embeddings.npz") if users
                                              else None)
    (target / "config.json").write_text(json.dumps(config))
    return coldstart_runs.read_run(str(target))


@pytest.mark.slow
def test_a_run_is_rebuilt_from_its_checkpoint_or_read_from_its_saved_model(image_only_run):
    import tensorflow as tf

    from cfimage.serving.run_export import SERVING_MODEL
    from cfimage.stage2 import data
    from cfimage.stage2.metrics import evaluate_scores
    run = coldstart_runs.read_run(str(image_only_run / "run"))
    run_data = coldstart_runs.load_data(run, log=lambda _: None)
    rebuilt = coldstart_runs.trained_model(run, run_data.catalogue)
    rows = run_data.splits["test"]
    catalogue = run_data.catalogue
    pixels = np.stack([data.decode_and_resize(tf.io.read_file(path), (32, 32)).numpy()
                       for path in catalogue.image_paths[rows]]).astype(np.float32)
    scores = rebuilt.predict(pixels, verbose=0)["labels"]
    assert evaluate_scores(catalogue.labels[rows], scores, catalogue.label_names)[
        "macro_map"] == pytest.approx(run.metrics["test"]["macro_map"], abs=1e-4)
    # The image embedding from the cached features equals the model's from the pixels.
    from_cache = coldstart_runs.image_embeddings(rebuilt, run, catalogue, rows[:4], 8,
                                                 log=lambda _: None)
    from_pixels = coldstart_runs.label_head_input(rebuilt)[0](pixels[:4])
    np.testing.assert_allclose(from_cache, from_pixels, rtol=1e-3, atol=1e-4)
    # A run that exported has the whole model in serving_model.keras: that one is read.
    rebuilt.save(str(image_only_run / "run" / SERVING_MODEL))
    try:
        loaded = coldstart_runs.trained_model(run, catalogue)
        assert loaded is not rebuilt
        np.testing.assert_allclose(loaded(pixels[:4])["cf"], rebuilt(pixels[:4])["cf"],
                                   rtol=1e-5, atol=1e-6)
    finally:
        os.remove(image_only_run / "run" / SERVING_MODEL)


@pytest.mark.slow
def test_a_run_whose_split_model_or_users_are_not_there_is_refused(image_only_run, tmp_path):
    run_dir = image_only_run / "run"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    moved = {**metrics, "num_items": {**metrics["num_items"], "test": 1}}
    cell = _copy(run_dir, tmp_path / "moved", moved)
    with pytest.raises(UserError, match="the catalogue changed since the run trained"):
        coldstart_runs.load_data(cell, log=lambda _: None)
    cell = _copy(run_dir, tmp_path / "no_users", metrics, users=False)
    with pytest.raises(UserError, match="no stage-1 user vectors .the run was given "
                                        "--cf_embeddings without --cf_user_embeddings"):
        coldstart_runs.load_data(cell, log=lambda _: None)
    other = {**metrics, "test": {**metrics["test"],
                                 "macro_map": metrics["test"]["macro_map"] + 0.05}}
    cell = _copy(run_dir, tmp_path / "other", other)
    with pytest.raises(UserError, match="exported model's test macro mAP .* differs"):
        coldstart_runs.measure_run(cell, 10, 5, str(tmp_path / "scratch"), log=lambda _: None)
