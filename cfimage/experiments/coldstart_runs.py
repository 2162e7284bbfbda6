"""A finished `cfimage.train` run read back for the cold-start measurement
(cfimage/coldstart.py), and its per-item figures (cfimage/experiments/coldstart.py).

What is read from a run's workdir:
  config.json, metrics.json   the settings (catalogue, split, seed, model, stage-1 files); the
                              run finished; cf_scaling (what `embed` maps back with); test mAP
  serving_model.keras         the trained model of a run that exported, or else
  checkpoints/best.weights.h5 the chosen checkpoint, loaded into the model rebuilt from the
                              config (cells of `cfimage.experiment` train with --noexport)
  cf_embeddings.npz, user_embeddings.npz   or the files --cf_embeddings / --cf_user_embeddings
                              named (an experiment's shared stage 1)
  skipped_images.csv          items training left out (unreadable images), if any

The split is not stored: it is recomputed as training computed it (data.split_items with the
run's fractions and seed), and checked: the export's serving_default must reproduce the test
macro mAP in metrics.json on the recomputed test items, or the run is refused.

The export measured is written afresh into a scratch directory by export.export_saved_model, the
function training exports with, from the trained model, the run's cf_scaling, the catalogue
table (every item with a CF vector) and the stage-1 user table, with top_k large enough for the
measurement. Not the run's own export: experiment cells have none, a run's top_k (10) is below
the audience K, and a run given --cf_embeddings exports no audience. The test items' predicted
vectors come from its `embed` signature; they are ranked in numpy with the signatures' own
scoring (dot product, coldstart.top_k), and `audience` and `similar_items` are called on the
first test items to check that both rankings agree (the agreement is reported).
"""

import dataclasses
import glob
import json
import os
import shutil
import time

import numpy as np

from cfimage.errors import UserError
from cfimage.experiments import coldstart as measures

SIGNATURE_CHECK_ITEMS = 32  # test items whose audience / similar_items are compared
MAP_TOLERANCE = 0.005  # |test mAP of the export - metrics.json's| above this: refused
IMAGE_ONLY = "image_only"  # the arm whose image embedding gives the image-only neighbours
# Where a run's trained model is: the whole model of a run that exported, else its checkpoint.
MODEL_FILES = (("serving_model.keras",), ("checkpoints", "best.weights.h5"))


@dataclasses.dataclass
class Run:
    workdir: str
    config: dict
    metrics: dict
    name: str = ""

    @property
    def stage2(self):
        return self.config["stage2"]

    @property
    def group(self):
        """Runs of one arm, label ratio and λ: seeds of one cell of a grid."""
        return (f"{self.stage2['arm']}, labels {self.stage2['label_ratio']:g}, "
                f"λ {self.stage2['cf_weight']:g}")


def find_runs(patterns, log=print):
    """The finished runs named by `patterns` (workdirs or glob patterns), in the order given,
    each once, named by their folder (or path, where two folders share a name). A folder that
    a glob matches but that holds no finished run (a cell still training, an experiment's
    stage1/) is skipped and logged; one named outright is a UserError."""
    workdirs = []
    for pattern in patterns:
        if not glob.has_magic(pattern):
            workdirs.append(os.path.abspath(pattern))
            continue
        found = sorted(glob.glob(pattern))
        finished = [path for path in found
                    if os.path.isfile(os.path.join(path, "metrics.json"))]
        if not finished:
            raise UserError(f"--runs: {pattern!r} matches no finished run "
                            f"({len(found)} folder(s) without a metrics.json)")
        unfinished = sorted(set(found) - set(finished))
        if unfinished:
            log(f"--runs: {pattern!r}: skipped {len(unfinished)} folder(s) without a "
                f"metrics.json (not finished): {', '.join(unfinished[:5])}")
        workdirs += [os.path.abspath(path) for path in finished]
    workdirs = list(dict.fromkeys(workdirs))
    runs = [read_run(workdir) for workdir in workdirs]
    names = [os.path.basename(run.workdir) for run in runs]
    for run, name in zip(runs, names):
        run.name = name if names.count(name) == 1 else run.workdir
    return runs


def read_run(workdir):
    """The Run of a finished cfimage.train workdir (UserError otherwise)."""
    paths = [os.path.join(workdir, name) for name in ("config.json", "metrics.json")]
    missing = [path for path in paths if not os.path.isfile(path)]
    if missing:
        raise UserError(f"{workdir}: not a finished cfimage.train run (no "
                        f"{os.path.basename(missing[0])}); give the workdir of a run whose "
                        "training finished, e.g. an experiment's <workdir>/cells/<cell>")
    try:
        config, metrics = (json.load(open(path)) for path in paths)
    except ValueError as error:
        raise UserError(f"{workdir}: unreadable config.json or metrics.json: {error}") from None
    if not any(os.path.isfile(os.path.join(workdir, *path)) for path in MODEL_FILES):
        raise UserError(f"{workdir}: neither {' nor '.join('/'.join(p) for p in MODEL_FILES)}: "
                        "the trained model is gone (a cell restored from its metrics.json "
                        "alone); train it again in a fresh workdir")
    if not metrics.get("cf_scaling") or config["output"].get("stage1_only"):
        raise UserError(f"{workdir}: metrics.json has no cf_scaling (a stage-1-only run, or "
                        "one from an older cfimage): the image model's CF vector cannot be "
                        "mapped back to stage 1's space")
    return Run(workdir, config, metrics)


# --- The run's data: catalogue, split, stage-1 tables -------------------------------------

@dataclasses.dataclass
class RunData:
    catalogue: object  # reader.Catalogue, as training read it (skipped images left out)
    splits: dict  # "train"/"validation"/"test" -> catalogue rows
    vectors: np.ndarray  # (num_items, d) stage-1 item vectors, zeros where has_vector is False
    has_vector: np.ndarray
    user_ids: np.ndarray  # (num_users,) str
    user_vectors: np.ndarray  # (num_users, d)


_catalogues = {}  # (root, spec, skipped items) -> Catalogue: runs of one grid read it once


def load_data(run, log=print):
    """The RunData of `run`, checked against the split sizes training recorded."""
    from cfimage.catalogue import reader
    from cfimage.stage1 import embedding_files
    from cfimage.stage2 import data

    settings = run.config["catalogue"]
    root = settings["root"] or os.path.join(run.workdir, "demo_catalogue")
    spec = reader.CatalogueSpec(**{**settings["spec"],
                                   "ignore_labels": tuple(settings["spec"]["ignore_labels"])})
    skipped_path = os.path.join(run.workdir, "skipped_images.csv")
    skipped = ()
    if os.path.isfile(skipped_path) and not run.stage2["tfrecords"]:
        import pandas as pd
        skipped = tuple(pd.read_csv(skipped_path, dtype=str).item_id)
    key = (os.path.abspath(root), repr(spec), skipped)
    if key not in _catalogues:
        log(f"reading the catalogue {root}")
        catalogue = reader.load_catalogue(root, spec, interactions=True)
        if skipped:
            catalogue = reader.drop_items(catalogue, np.isin(catalogue.item_ids, skipped))
        _catalogues.clear()  # one catalogue in memory at a time
        _catalogues[key] = catalogue
    catalogue = _catalogues[key]

    splits = data.split_items(catalogue.num_items, catalogue.labelled,
                              tuple(run.stage2["split"]), run.stage2["seed"])
    sizes = {name: len(rows) for name, rows in splits.items()}
    if sizes != run.metrics.get("num_items", sizes):
        raise UserError(f"{run.workdir}: the split recomputed from the catalogue {root} has "
                        f"{sizes} items, training had {run.metrics['num_items']}: the "
                        "catalogue changed since the run trained")

    stage1 = run.config["stage1"]
    items_path = stage1["cf_embeddings"] or os.path.join(run.workdir, "cf_embeddings.npz")
    users_path = stage1.get("cf_user_embeddings") or (
        None if stage1["cf_embeddings"] else os.path.join(run.workdir, "user_embeddings.npz"))
    if users_path is None or not os.path.isfile(users_path):
        where = users_path or "the run was given --cf_embeddings without --cf_user_embeddings"
        raise UserError(f"{run.workdir}: no stage-1 user vectors ({where}): the audience "
                        "cannot be ranked; train the run with the user table of its stage 1")
    try:
        ids, vectors = embedding_files.load_embeddings(items_path)
        vectors, has_vector = embedding_files.align_embeddings(
            catalogue.item_ids, ids, vectors, items_path, log=lambda _: None)
        user_ids, user_vectors = embedding_files.load_embeddings(users_path)
    except ValueError as error:
        raise UserError(f"{run.workdir}: stage-1 vectors: {error}") from None
    if user_vectors.shape[1] != vectors.shape[1]:
        raise UserError(f"{users_path}: user vectors of dimension {user_vectors.shape[1]}, the "
                        f"item vectors ({items_path}) have {vectors.shape[1]}")
    return RunData(catalogue, splits, vectors, has_vector, np.asarray(user_ids).astype(str),
                   user_vectors)


# --- The trained model and its export -------------------------------------------------------

def trained_model(run, catalogue):
    """The run's trained Keras model (pixels -> {"labels", "cf"}): serving_model.keras when the
    run exported, else the model rebuilt from the config with checkpoints/best.weights.h5."""
    import keras

    from cfimage.serving.run_export import SERVING_MODEL
    from cfimage.stage2 import arms, features
    from cfimage.stage2 import losses, model as model_lib  # noqa: F401  (custom objects)

    saved = os.path.join(run.workdir, SERVING_MODEL)
    if os.path.isfile(saved):
        return keras.saving.load_model(saved, compile=False)
    best = os.path.join(run.workdir, *MODEL_FILES[1])  # read_run checked that one exists
    stage2, scaling = run.stage2, run.metrics["cf_scaling"]
    cf_dim = len(scaling["matrix"]) if "matrix" in scaling else len(scaling["mean"])
    multi_label = catalogue.is_multi_label(run.config["catalogue"]["task"])
    shape = dict(dropout=stage2["dropout"], adapter_units=stage2["adapter_units"],
                 hybrid=arms.get(stage2["arm"]).cf_input,
                 cf_input_dropout=stage2["cf_input_dropout"])
    image_size = tuple(stage2["image_size"])
    try:
        if stage2["train_backbone"]:  # one network, saved whole (its weights need no download)
            model = model_lib.build_model(stage2["backbone"], None, image_size,
                                          catalogue.num_classes, multi_label, cf_dim, **shape)
            model.load_weights(best)
            return model
        # Cached features: the checkpoint holds the heads (or, after fine-tuning, the whole
        # composed model); the backbone is the one the features were extracted with.
        backbone = features.extraction_backbone(stage2["backbone"], stage2["weights"],
                                                image_size)
        heads = model_lib.build_heads(run.metrics["stage2"]["feature_dim"],
                                      catalogue.num_classes, multi_label, cf_dim, **shape)
        model = model_lib.compose(backbone, heads, name=f"cfimage_{stage2['backbone']}")
        phase = run.metrics["stage2"].get("best_phase", "heads")
        (heads if phase == "heads" else model).load_weights(best)
        return model
    except (ValueError, ImportError, OSError, RuntimeError) as error:
        raise UserError(f"{run.workdir}: cannot rebuild the trained model from its config "
                        f"and {best}: {error}") from None


def export_for_measurement(model, run, run_data, top_k, directory, log=print):
    """The run's model exported with every CF table (export.export_saved_model) into
    `directory`; returns the loaded SavedModel."""
    import tensorflow as tf

    from cfimage.serving import export

    table = run_data.has_vector
    path = export.export_saved_model(
        model, run_data.catalogue.label_names, run.stage2["image_size"], directory, "run",
        version=1, metadata={"workdir": run.workdir, "purpose": "cfimage.coldstart"},
        cf_scaling=run.metrics["cf_scaling"], item_ids=run_data.catalogue.item_ids[table],
        item_vectors=run_data.vectors[table], user_ids=run_data.user_ids,
        user_vectors=run_data.user_vectors, top_k=top_k, log=lambda _: None)
    log(f"  exported to {path}")
    return tf.saved_model.load(path)


def call_signature(signature, image_paths, batch_size):
    """{output: (n, ...) numpy} of an export's signature on the image files, batch by batch."""
    import tensorflow as tf

    parts = {}
    for start in range(0, len(image_paths), batch_size):
        images = [open(path, "rb").read() for path in image_paths[start:start + batch_size]]
        for name, value in signature(images=tf.constant(images)).items():
            parts.setdefault(name, []).append(value.numpy())
    return {name: np.concatenate(values) for name, values in parts.items()}


def label_head_input(model):
    """(pixels -> the label head's input, features -> the same or None): the image embedding
    the classifier learnt (the adapter's output, or the pooled backbone features without one).
    The second model exists for a composed model (cached-feature training), whose backbone
    features may come from the cache."""
    import keras

    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)
              and any(inner.name == "labels_dropout" for inner in layer.layers)]
    if not nested:  # one flat network (end-to-end training)
        pixels = model.input["pixels"] if isinstance(model.input, dict) else model.input
        return keras.Model(pixels, model.get_layer("labels_dropout").input), None
    heads = nested[0]
    backbone = [layer for layer in model.layers
                if isinstance(layer, keras.Model) and layer is not heads][0]
    features = heads.input["features"] if isinstance(heads.input, dict) else heads.input
    head_part = keras.Model(features, heads.get_layer("labels_dropout").input)
    pixels = keras.Input(shape=backbone.input_shape[1:], name="pixels")
    return keras.Model(pixels, head_part(backbone(pixels))), head_part


def image_embeddings(model, run, catalogue, rows, batch_size, log=print):
    """(len(rows), e) the label head's input for the catalogue rows `rows`. A cached-feature
    run whose chosen checkpoint is of the heads phase (its backbone is the extraction
    backbone) reads the plain-view features from its cache, which gives what the model computes
    from the images; other runs run the model on the images."""
    from cfimage.stage2 import data, features

    pixels_model, head_part = label_head_input(model)
    stage2 = run.stage2
    image_size = tuple(stage2["image_size"])
    if (head_part is not None and not stage2["train_backbone"]
            and run.metrics["stage2"].get("best_phase", "heads") == "heads"):
        cached = features.per_view(stage2["feature_cache"], catalogue.image_paths,
                                   stage2["backbone"], stage2["weights"], image_size,
                                   ("plain",), batch_size=batch_size, log=log)
        return head_part.predict(cached.views["plain"][rows], batch_size=256, verbose=0)
    import tensorflow as tf
    log(f"  image embeddings of {len(rows)} catalogue items through the model")
    dataset = tf.data.Dataset.from_tensor_slices(catalogue.image_paths[rows]).map(
        lambda path: tf.cast(data.decode_and_resize(tf.io.read_file(path), image_size),
                             tf.float32)).batch(batch_size)
    return pixels_model.predict(dataset, verbose=0)


# --- The measurement of one run -------------------------------------------------------------

def measure_run(run, audience_k, neighbours_k, scratch, batch_size=32, log=print):
    """({figure: (n,) per-item values}, {what was checked and counted}) of one run: the
    figures of coldstart.FIGURES over its test items (image-embedding neighbours only for the
    image_only arm)."""
    from cfimage.stage2.metrics import evaluate_scores

    started = time.time()
    run_data = load_data(run, log=log)
    catalogue, vectors, has_vector = run_data.catalogue, run_data.vectors, run_data.has_vector
    test = run_data.splits["test"]
    table_rows = np.flatnonzero(has_vector)  # the export's item table, in catalogue order
    row_in_table = np.full(catalogue.num_items, -1)
    row_in_table[table_rows] = np.arange(len(table_rows))
    model = trained_model(run, catalogue)
    os.makedirs(scratch, exist_ok=True)
    export_dir = os.path.join(scratch, "export")
    shutil.rmtree(export_dir, ignore_errors=True)
    served = export_for_measurement(model, run, run_data, max(audience_k, neighbours_k + 1),
                                    export_dir, log)

    # The test items through the export: label scores (the check) and predicted vectors.
    paths = catalogue.image_paths[test]
    log(f"  {len(test)} test items through the export's serving_default and embed")
    scores = call_signature(served.signatures["serving_default"], paths, batch_size)["scores"]
    test_map = evaluate_scores(catalogue.labels[test], scores,
                               catalogue.label_names)["macro_map"]
    trained_map = run.metrics["test"]["macro_map"]
    if abs(test_map - trained_map) > MAP_TOLERANCE:
        raise UserError(f"{run.workdir}: the exported model's test macro mAP {test_map:.4f} "
                        f"differs from the run's {trained_map:.4f} (metrics.json): the "
                        "catalogue, the split or the model is not what training used")
    predicted = call_signature(served.signatures["embed"], paths, batch_size)["embedding"]

    # Audience: test items with a stage-1 vector (the ceiling) and a rater in the user table.
    users = run_data.user_ids
    item_raters = measures.raters(catalogue.interactions, catalogue.item_ids[test], users)
    audience = np.array([i for i in range(len(test))
                         if has_vector[test[i]] and len(item_raters[i])], np.int64)
    relevant = [item_raters[i] for i in audience]
    by_model = measures.top_k(predicted[audience], run_data.user_vectors, audience_k)
    popular = measures.popularity_ranking(catalogue.interactions,
                                          catalogue.item_ids[run_data.splits["train"]], users)
    by_popularity = np.tile(popular[:audience_k], (len(audience), 1))
    by_ceiling = measures.top_k(vectors[test[audience]], run_data.user_vectors, audience_k)
    figures = {"audience_model": measures.recall(by_model, relevant),
               "audience_popularity": measures.recall(by_popularity, relevant),
               "audience_ceiling": measures.recall(by_ceiling, relevant)}
    figures["audience_model_minus_popularity"] = (figures["audience_model"]
                                                  - figures["audience_popularity"])

    # Similar items: test items with a stage-1 vector (their true CF neighbours).
    similar = np.flatnonzero(has_vector[test])
    own = row_in_table[test[similar]]
    table_vectors, table_labels = vectors[table_rows], catalogue.labels[table_rows]
    query_labels = catalogue.labels[test[similar]]
    true_neighbours = measures.top_k(vectors[test[similar]], table_vectors, neighbours_k, own)
    model_neighbours = measures.top_k(predicted[similar], table_vectors, neighbours_k, own)
    figures.update(
        similar_model_labels=measures.label_overlap(model_neighbours, query_labels,
                                                    table_labels),
        similar_model_cf=measures.neighbour_recall(model_neighbours, true_neighbours),
        similar_true_labels=measures.label_overlap(true_neighbours, query_labels,
                                                   table_labels),
        similar_chance_labels=measures.chance_label_overlap(query_labels, table_labels, own))
    if run.stage2["arm"] == IMAGE_ONLY:
        embedded = image_embeddings(model, run, catalogue, table_rows, batch_size, log)
        image_neighbours = measures.top_k(embedded[own], embedded, neighbours_k, own,
                                          cosine=True)
        figures.update(
            similar_image_labels=measures.label_overlap(image_neighbours, query_labels,
                                                        table_labels),
            similar_image_cf=measures.neighbour_recall(image_neighbours, true_neighbours))

    # The signatures rank as the numpy rankings above (first test items).
    check = audience[:SIGNATURE_CHECK_ITEMS]
    served_users = call_signature(served.signatures["audience"], paths[check],
                                  batch_size)["user_ids"].astype(str)[:, :audience_k]
    check_items = similar[:SIGNATURE_CHECK_ITEMS]
    served_items = call_signature(served.signatures["similar_items"], paths[check_items],
                                  batch_size)["item_ids"].astype(str)
    own_ids = catalogue.item_ids[test[check_items]]
    served_items = [[i for i in row if i != own_id][:neighbours_k]
                    for row, own_id in zip(served_items, own_ids)]
    info = {
        "run": run.name, "workdir": run.workdir, "arm": run.stage2["arm"],
        "label_ratio": run.stage2["label_ratio"], "cf_weight": run.stage2["cf_weight"],
        "seed": run.stage2["seed"], "test_items": len(test),
        "audience_items": len(audience), "similar_items": len(similar),
        "test_map_export": round(float(test_map), 4), "test_map_run": round(trained_map, 4),
        "audience_signature_agreement": _agreement(served_users,
                                                   users[by_model[:len(check)]]),
        "similar_signature_agreement": _agreement(
            served_items, catalogue.item_ids[table_rows][model_neighbours[:len(check_items)]]),
        "seconds": round(time.time() - started, 1)}
    shutil.rmtree(export_dir, ignore_errors=True)
    return figures, info


def _agreement(served, ranked):
    """Mean share of the numpy ranking's ids (rows of `ranked`) that the signature returned."""
    shares = [len(set(a) & set(b)) / max(len(b), 1) for a, b in zip(served, ranked)]
    return round(float(np.mean(shares)), 4) if shares else float("nan")
