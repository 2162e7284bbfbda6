"""Stage 1 on an interaction log held in memory (a pandas frame).

The rows are validated by the catalogue's one validator (cfimage.catalogue.reader
.check_interactions), counted as one chunk by scan.LogCounter, mapped to integer table rows
once, and handed to the one training routine (two_tower.train) as blocks of rows. The
streaming path (cfimage/stage1/stream.py) differs only in reading the blocks from files.
"""

import numpy as np
import pandas as pd
import tensorflow as tf

from cfimage.catalogue import reader
from cfimage.stage1 import holdout, scan, two_tower

# Rows per block: the unit of the shuffle; the streaming path's StreamConfig.block_lines, so
# that the two paths batch the same rows alike.
BLOCK_ROWS = scan.StreamConfig().block_lines
_FRAME_SPEC = reader.CatalogueSpec(unknown_interaction_items="keep")


def clean_interactions(interactions):
    """A DataFrame of user_id, item_id and optional weight -> validated user_id, item_id
    (str), weight (float32), through the catalogue's validator (messages name the row)."""
    if not isinstance(interactions, pd.DataFrame):
        raise ValueError(f"interactions must be a pandas DataFrame, got {type(interactions)}")
    if len(interactions) == 0:
        raise ValueError("interactions: empty log; stage 1 needs at least one interaction")
    columns = [c for c in ("user_id", "item_id", "weight") if c in interactions.columns]
    text = interactions[columns].apply(
        lambda column: column.where(column.notna(), "").astype(str))
    frame, _ = reader.check_interactions(text, np.arange(len(text)), "interactions", _FRAME_SPEC,
                                         set(), unit="row")
    return frame


class Rows:
    """The rows of a frame as integer table rows, with their LogSummary."""

    def __init__(self, frame, config):
        counter = scan.LogCounter(config)
        self.held = counter.add(frame)
        self.summary = counter.summary()
        self.user = pd.Index(self.summary.users).get_indexer(frame["user_id"]).astype(np.int32)
        self.item = pd.Index(self.summary.items).get_indexer(frame["item_id"]).astype(np.int32)
        self.weight = frame["weight"].to_numpy(np.float64)
        self.fitted = (np.ones(len(frame), bool) if config.min_rating is None
                       else self.weight >= config.min_rating)
        self.config = config

    def keep(self, phase):
        return self.fitted & ~self.held if phase == "holdout" else self.fitted

    def dataset(self, phase):
        """Shuffled batches of a phase's rows (the whole log is one shuffle window)."""
        keep = self.keep(phase)
        weight = self.weight[keep] / self.summary.phase(phase).weight_mean
        columns = {"user": self.user[keep], "item": self.item[keep],
                   "weight": weight.astype(np.float32)}
        starts = np.arange(0, int(keep.sum()), BLOCK_ROWS)
        blocks = tf.data.Dataset.from_tensor_slices(
            {name: tf.RaggedTensor.from_row_starts(values, starts)
             for name, values in columns.items()})
        return two_tower.batches(blocks, int(keep.sum()), self.config.batch_size,
                                 max(len(starts), 1), self.config.seed)

    def svd_pairs(self):
        keep = self.keep("holdout")
        return self.user[keep], self.item[keep]


def train_two_tower(interactions, item_ids, config, log=print, tensorboard_dir=None,
                    backup_dir=None):
    """Learns CF vectors for the catalogue `item_ids` from `interactions`; returns a
    two_tower.CFResult.

    interactions: DataFrame with user_id, item_id and optional weight (> 0, default 1); it may
    hold items outside the catalogue (kept in training). See two_tower.train.
    """
    config.validate()
    rows = Rows(clean_interactions(interactions), config)
    return two_tower.train(rows.summary, rows.dataset, item_ids, config, log=log,
                           tensorboard_dir=tensorboard_dir, backup_dir=backup_dir,
                           svd_pairs=rows.svd_pairs())


def train_model(interactions, item_ids, config, log=print, tensorboard_dir=None,
                backup_dir=None):
    """train_two_tower for config.model == "two_tower"; the Mult-VAE or SVD model
    (cfimage/stage1/matrix.py) on the same rows otherwise. Returns a two_tower.CFResult."""
    if config.model == "two_tower":
        return train_two_tower(interactions, item_ids, config, log=log,
                               tensorboard_dir=tensorboard_dir, backup_dir=backup_dir)
    from cfimage.stage1 import matrix
    config.validate()
    rows = Rows(clean_interactions(interactions), config)
    return matrix.train(rows, item_ids, config, log=log, tensorboard_dir=tensorboard_dir,
                        backup_dir=backup_dir)


def holdout_metrics(interactions, config, log=print):
    """Only the held-out evaluation of train_two_tower (no refit): a dict of metrics.

    For tuning: recall@k of the two-tower, popularity and SVD, as train_two_tower reports them.
    """
    config.validate()
    if not 0 < config.holdout_fraction < 1:
        raise ValueError(f"holdout_metrics: holdout_fraction must be in (0, 1); got "
                         f"{config.holdout_fraction}")
    rows = Rows(clean_interactions(interactions), config)
    return two_tower.holdout_fit(rows.summary, rows.dataset, config, log, None, None,
                                 rows.svd_pairs())


def split_holdout(frame, fraction, seed):
    """(train, heldout) rows of `frame` under the held-out protocol (holdout.heldout_mask)."""
    held = holdout.heldout_mask(frame["user_id"].to_numpy(str), frame["item_id"].to_numpy(str),
                                fraction, seed).numpy()
    return frame[~held].reset_index(drop=True), frame[held].reset_index(drop=True)
