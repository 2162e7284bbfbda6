"""The export at the end of a training run: its model, labels and CF tables as a SavedModel
under <export_dir>/<model_name>/<version>/ (cfimage/serving/export.py)."""

import json
import os

import numpy as np

from cfimage.serving import export

SERVING_MODEL = "serving_model.keras"  # in the workdir: what refresh.py re-exports


def export_run(model, catalogue, vectors, has_vector, cf_scaling, metadata, config, log=print):
    """Exports a trained run; returns the version directory. User vectors (the audience
    signature) come only from this workdir's own stage 1: vectors from another two-tower run
    (or for --cf_embeddings) live in a different space."""
    users_path = os.path.join(config.output.workdir, "user_embeddings.npz")
    users = {"user_ids": None, "user_vectors": None}
    if not config.stage1.cf_embeddings and os.path.isfile(users_path):
        with np.load(users_path) as saved:
            users = {"user_ids": saved["ids"], "user_vectors": saved["vectors"]}
    path = export.export_saved_model(
        model, catalogue.label_names, config.stage2.image_size, config.output.export_dir,
        config.output.model_name, metadata=metadata, cf_scaling=cf_scaling,
        item_ids=catalogue.item_ids[has_vector], item_vectors=vectors[has_vector], **users,
        log=log)
    # The Keras model itself, for a later export with a refreshed CF table and no retraining
    # (cfimage/serving/refresh.py).
    model.save(os.path.join(config.output.workdir, SERVING_MODEL))
    with open(os.path.join(path, "assets.extra", "cfimage.json")) as f:
        signatures = json.load(f)["signatures"]
    log(f"exported SavedModel to {path} (signatures: {', '.join(signatures)})")
    return path
