"""Stage 1 as one call: the CF item vectors of a run, from the interaction log or a file.

`run_stage1` is what `cfimage.train` calls. It
  * loads a user's own vectors (`--cf_embeddings`), or
  * reuses a finished stage 1 of the same settings in this workdir, or
  * trains the stage-1 model (--cf_model: the TFRS two-tower, in memory or streaming the
    log; or Mult-VAE or SVD on the log in memory, cfimage/stage1/matrix.py) and writes
    cf_embeddings.npz, user_embeddings.npz and cf_stage1.json into the workdir,
resuming from <workdir>/stage1_backup when a run with the same settings was killed.
It also writes the TensorBoard projector view of the vectors.
"""

import dataclasses
import json
import os
import shutil

import numpy as np

from cfimage import atomic
from cfimage.errors import UserError
from cfimage.stage1 import embedding_files, scan

MODEL_TITLES = {"two_tower": "two-tower retrieval model (TFRS)",
                "mult_vae": "Mult-VAE with item bias (the paper's CF model)",
                "svd": "truncated-SVD item factors"}


@dataclasses.dataclass
class Stage1Output:
    vectors: np.ndarray  # (num_items, d) float32, rows aligned with the catalogue's items
    has_vector: np.ndarray  # (num_items,) bool: False rows are zeros (masked in the CF loss)
    metrics: dict  # held-out recall figures and settings; {} for --cf_embeddings
    source: str  # the file the vectors were read from or written to
    log_summary: object = None  # scan.LogSummary of a streamed log, when one was scanned


def should_stream(mode, root, interactions_file):
    """--stream_interactions (auto|true|false) -> (stream, why)."""
    return scan.should_stream(mode, root, interactions_file)


def scan_log(root, spec, listed_ids, config, stream_config, log=print):
    """The validating, counting pass over a streamed log (its notes are logged)."""
    summary = scan.scan_interactions(scan.interaction_files(root, spec.interactions_file), spec,
                                     listed_ids, config, stream_config, log=log)
    for note in summary.notes:
        log(note)
    return summary


def interactions_per_item(catalogue, output, spec, listed_ids, config, stream_config,
                          log=print):
    """Interactions of each catalogue item (int array aligned with the items)."""
    if catalogue.interactions is not None:
        counts = catalogue.interactions.item_id.value_counts()
    else:  # a streamed log: counted by the scan, which runs now if stage 1 did not need it
        summary = output.log_summary or scan_log(catalogue.root, spec, listed_ids, config,
                                                 stream_config, log=log)
        counts = summary.item_counts
    return counts.reindex(catalogue.item_ids, fill_value=0).to_numpy()


def run_stage1(catalogue, spec, listed_ids, config, stream_config, workdir, outdir, *,
               cf_embeddings=None, streaming=False, stream_why="", log=print):
    """The CF vectors of this run (see the module docstring). `listed_ids` are the item ids
    of items.csv before unreadable images were dropped (a streamed log is checked against
    them); `outdir` is where this process writes TensorBoard files (the workdir, or a
    worker's own directory)."""
    cf_path = os.path.join(workdir, "cf_embeddings.npz")
    cf_state = os.path.join(workdir, "cf_stage1.json")
    key = {"config": repr(config), "catalogue": catalogue.root, "source": cf_embeddings}
    if streaming:  # shuffled in a window, no SVD baseline: not interchangeable
        key.update(stream=True, interactions=spec.interactions_file,
                   shuffle_buffer=stream_config.shuffle_buffer)
    # A killed stage 1 resumes from this backup (last completed epoch, held-out metrics); it
    # is removed once cf_embeddings.npz and cf_stage1.json are written.
    backup = os.path.join(workdir, "stage1_backup")
    metrics, summary = {}, None

    if cf_embeddings:
        log(f"stage 1 skipped: CF vectors from {cf_embeddings}")
        source = cf_embeddings
        vectors, has_vector = _read_aligned(catalogue.item_ids, cf_embeddings, log)
    elif os.path.isfile(cf_state) and json.load(open(cf_state)).get("key") == key:
        log(f"stage 1 already done in this workdir: reusing {cf_path}")
        source = cf_path
        metrics = json.load(open(cf_state))["metrics"]
        vectors, has_vector = _read_aligned(catalogue.item_ids, cf_path, log)
    else:
        source = cf_path
        backup_key = os.path.join(backup, "key.json")
        if os.path.isdir(backup) and (not os.path.isfile(backup_key)
                                      or json.load(open(backup_key)) != key):
            log(f"stage 1: settings differ from the interrupted run's; removing {backup}")
            shutil.rmtree(backup)
        os.makedirs(backup, exist_ok=True)
        atomic.write_json(backup_key, key)
        tensorboard_dir = os.path.join(workdir, "tensorboard", "stage1")
        # Imported here: TFRS (and tf_keras) load only when stage 1 trains.
        from cfimage.stage1 import memory, stream
        if streaming and config.model != "two_tower":
            raise UserError(f"--cf_model={config.model} fits the user x item matrix in "
                            f"memory; this log is streamed ({stream_why}): use "
                            "--stream_interactions=false, or --cf_model=two_tower")
        if streaming:
            log(f"stage 1: two-tower retrieval model (TFRS), streaming the interactions "
                f"({stream_why})")
            summary = scan_log(catalogue.root, spec, listed_ids, config, stream_config, log)
            result = stream.train_two_tower_stream(
                summary, catalogue.item_ids, config, stream_config, log=log,
                tensorboard_dir=tensorboard_dir, backup_dir=backup)
        else:
            log(f"stage 1: {MODEL_TITLES[config.model]} on {len(catalogue.interactions)} "
                "interactions")
            result = memory.train_model(
                catalogue.interactions, catalogue.item_ids, config, log=log,
                tensorboard_dir=tensorboard_dir, backup_dir=backup)
        vectors, has_vector, metrics = result.vectors, result.has_vector, result.metrics
        embedding_files.save_embeddings(cf_path, catalogue.item_ids[has_vector],
                                        vectors[has_vector])
        np.savez(os.path.join(workdir, "user_embeddings.npz"), ids=result.user_ids,
                 vectors=result.user_vectors)
        atomic.write_json(cf_state, {"key": key, "metrics": metrics})
        shutil.rmtree(backup)

    embedding_files.write_projector(
        os.path.join(outdir, "tensorboard", "embeddings"), catalogue.item_ids[has_vector],
        vectors[has_vector],
        [{"item_id": i, "labels": "|".join(n for n, on in zip(catalogue.label_names, row) if on)}
         for i, row in zip(catalogue.item_ids[has_vector], catalogue.labels[has_vector])])
    return Stage1Output(vectors, has_vector, metrics, source, summary)


def user_vectors(workdir, stage1_config, dim):
    """Stage 1's user table (n_users, dim) for the score loss: --cf_user_embeddings, or the
    user_embeddings.npz this workdir's stage 1 wrote; None for --cf_embeddings alone."""
    path = stage1_config.cf_user_embeddings
    if path is None and not stage1_config.cf_embeddings:
        path = os.path.join(workdir, "user_embeddings.npz")
    if path is None or not os.path.isfile(path):
        if stage1_config.cf_user_embeddings:
            raise UserError(f"--cf_user_embeddings={path}: no such file")
        return None
    try:
        _, vectors = embedding_files.load_embeddings(path)
    except ValueError as error:
        raise UserError(str(error)) from error
    if vectors.shape[1] != dim:
        raise UserError(f"{path}: user vectors of dimension {vectors.shape[1]}, but the item "
                        f"vectors have {dim}: pass the user table of the same stage-1 run")
    return vectors


def _read_aligned(item_ids, path, log):
    try:
        ids, vectors = embedding_files.load_embeddings(path)
        return embedding_files.align_embeddings(item_ids, ids, vectors, path, log=log)
    except UserError:
        raise
    except ValueError as error:  # the file's own messages name it
        raise UserError(str(error)) from error
