r"""A new export version with a refreshed CF item table, without retraining the image model.

    python -m cfimage.serving.refresh --export=saved_models/my_shop/3 \
        --cf_embeddings=runs/my_shop_stage1_new/cf_embeddings.npz [--align=linear]

Items added after training get their vectors from a later stage-1 run; `classify_items` (hybrid
models) and `similar_items` then know them. The image model is the one the export was written
from (`<workdir>/serving_model.keras`, saved by every exported run), so labels and embeddings
of images are unchanged; only the table and the hash table over its ids are new. The new
version is written next to the old one (TF Serving picks it up).

Its limit: the vectors must live in the stage-1 space the model was trained with (the hybrid
model reads a vector's coordinates, and similar_items compares its own predicted vector with
them). A vector table from the same two-tower model, or a file already aligned with it, is;
a new two-tower run is not (its space is another one: rotated, rescaled), so it is checked on
the items both tables have: R² of the new vectors against the old must reach --min_r2.
`--align=linear` first fits a linear map (least squares, with an intercept) from the new
space to the old on those shared items and applies it to every new vector; that needs more
shared items than dimensions, and works when the two runs learned the same geometry up to a
linear map (check the R² it logs). Ids unseen by the hybrid model's training are fine.
"""

import json
import os
import sys

import numpy as np

from cfimage.errors import UserError

MIN_R2 = 0.9


def space_fit(old, new, align):
    """(new vectors mapped into the old space, R² on the shared rows). `old`, `new`: the
    shared items' vectors (m, d) in the same order; `align`: "none" or "linear". The map is
    returned as a function of any (n, d) array."""
    old, new = np.asarray(old, np.float64), np.asarray(new, np.float64)
    if align == "linear":
        design = np.concatenate([new, np.ones((len(new), 1))], axis=1)
        if len(new) <= design.shape[1]:
            raise UserError(f"--align=linear needs more shared items than {design.shape[1]} "
                            f"(dimensions + 1) to fit the map; the tables share {len(new)}")
        weights, *_ = np.linalg.lstsq(design, old, rcond=None)

        def mapping(vectors):
            vectors = np.asarray(vectors, np.float64)
            return np.concatenate([vectors, np.ones((len(vectors), 1))], 1) @ weights
    else:
        def mapping(vectors):
            return np.asarray(vectors, np.float64)
    residual = ((mapping(new) - old) ** 2).sum()
    total = ((old - old.mean(axis=0)) ** 2).sum()
    return mapping, float(1.0 - residual / total) if total > 0 else float("nan")


def _read_json(path):
    with open(path) as f:
        return json.load(f)


def refresh_item_table(version_dir, cf_embeddings, align="none", min_r2=MIN_R2,
                       old_embeddings=None, keras_model=None, log=print):
    """Writes a new version of the export at `version_dir` whose item table is the vectors of
    `cf_embeddings` (an .npz or .csv of cfimage/stage1/embedding_files.py), checked against
    (and, `align="linear"`, mapped into) the space of the table the model was trained with
    (`old_embeddings`, default the run's own). Returns the new version directory."""
    import keras

    from cfimage.serving import export
    from cfimage.serving.run_export import SERVING_MODEL
    from cfimage.stage1 import embedding_files
    from cfimage.stage2 import losses, model as model_lib  # noqa: F401  (custom objects)

    meta_path = os.path.join(version_dir, "assets.extra", "cfimage.json")
    if not os.path.isfile(meta_path):
        raise UserError(f"--export={version_dir}: no assets.extra/cfimage.json; give the "
                        "version directory of a cfimage export, e.g. saved_models/NAME/3")
    meta = _read_json(meta_path)
    if not meta.get("cf_scaling") or not meta.get("workdir"):
        raise UserError(f"{meta_path}: no cf_scaling or workdir (an export without a CF "
                        "table, or from an older cfimage): retrain or export it again")
    workdir = meta["workdir"]
    keras_model = keras_model or os.path.join(workdir, SERVING_MODEL)
    if not os.path.isfile(keras_model):
        raise UserError(f"{keras_model}: no such file; the run's export writes it (give "
                        "--keras_model if the workdir moved)")
    config = _read_json(os.path.join(workdir, "config.json"))
    old_embeddings = old_embeddings or config["stage1"]["cf_embeddings"] or os.path.join(
        workdir, "cf_embeddings.npz")
    try:
        old_ids, old_vectors = embedding_files.load_embeddings(old_embeddings)
        new_ids, new_vectors = embedding_files.load_embeddings(cf_embeddings)
    except (OSError, ValueError) as error:
        raise UserError(f"CF vectors: {error}") from None
    old_ids, new_ids = np.asarray(old_ids).astype(str), np.asarray(new_ids).astype(str)
    if new_vectors.shape[1] != old_vectors.shape[1]:
        raise UserError(f"{cf_embeddings}: vectors of dimension {new_vectors.shape[1]}, the "
                        f"model's are {old_vectors.shape[1]}: another stage-1 space")

    # The new table's space, checked (or aligned) on the items both tables have.
    old_row = {item: row for row, item in enumerate(old_ids)}
    shared = [(old_row[item], row) for row, item in enumerate(new_ids) if item in old_row]
    if not shared:
        raise UserError(f"{cf_embeddings} shares no item id with the table the model was "
                        f"trained with ({old_embeddings}): its space cannot be checked")
    old_rows, new_rows = (np.asarray(rows) for rows in zip(*shared))
    mapping, r2 = space_fit(old_vectors[old_rows], new_vectors[new_rows], align)
    log(f"refresh: {len(new_ids)} items ({len(new_ids) - len(shared)} new), {len(shared)} "
        f"shared with the training table; R² of the new vectors against the old "
        f"({'after a linear map' if align == 'linear' else 'as they are'}): {r2:.4f}")
    if not r2 >= min_r2:
        raise UserError(
            f"{cf_embeddings}: R² {r2:.3f} against the training table on {len(shared)} shared "
            f"items, below --min_r2={min_r2}: these vectors are not in the stage-1 space the "
            "model was trained with (a new two-tower run is another space)"
            + ("; try --align=linear" if align == "none" else "") + ", or retrain")
    vectors = mapping(new_vectors).astype(np.float32)

    users = {"user_ids": None, "user_vectors": None}
    users_path = os.path.join(workdir, "user_embeddings.npz")
    if not config["stage1"]["cf_embeddings"] and os.path.isfile(users_path):
        with np.load(users_path) as saved:  # the old space, where the mapped items now are
            users = {"user_ids": saved["ids"], "user_vectors": saved["vectors"]}
    model = keras.saving.load_model(keras_model, compile=False)
    keep = ("backbone", "multi_label", "train_backbone", "test_macro_map", "workdir")
    model_dir = os.path.dirname(os.path.abspath(version_dir))
    path = export.export_saved_model(
        model, meta["label_names"], meta["image_size"], os.path.dirname(model_dir),
        os.path.basename(model_dir), cf_scaling=meta["cf_scaling"], item_ids=new_ids,
        item_vectors=vectors, **users, top_k=meta["top_k"], log=log,
        metadata={**{k: meta[k] for k in keep if k in meta},
                  "refreshed_from": os.path.abspath(version_dir),
                  "item_table": os.path.abspath(cf_embeddings), "item_table_align": align,
                  "item_table_r2": r2})
    log(f"refresh: wrote {path} (the model of {version_dir}, item table {cf_embeddings})")
    return path


def main(argv=None):
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--export", required=True, help="version directory of the export")
    parser.add_argument("--cf_embeddings", required=True, help="the new item vectors")
    parser.add_argument("--align", choices=("none", "linear"), default="none")
    parser.add_argument("--min_r2", type=float, default=MIN_R2)
    parser.add_argument("--old_embeddings", default=None,
                        help="the table the model was trained with (default: the run's)")
    parser.add_argument("--keras_model", default=None,
                        help="default: <workdir>/serving_model.keras of the export's run")
    args = parser.parse_args(argv)
    try:
        refresh_item_table(args.export, args.cf_embeddings, args.align, args.min_r2,
                           args.old_embeddings, args.keras_model)
    except UserError as error:
        sys.exit(f"cfimage: error: {error}")


if __name__ == "__main__":
    main()
