"""The CF tables of an export (cfimage/serving/export.py): the catalogue's item vectors and the
two-tower user vectors as variables inside the SavedModel, top-k by dot product over them, and
(hybrid models) the in-graph lookup of an item's vector by its id.

Stock TensorFlow ops only: TF Serving needs nothing but the SavedModel directory.
"""

import numpy as np
import tensorflow as tf


def check_table(kind, ids, vectors, dim):
    """Ids and vectors of one CF table as (str array, float32 array), or ValueError."""
    if (ids is None) != (vectors is None):
        raise ValueError(f"{kind}: give both ids and vectors, or neither")
    if ids is None:
        return None
    ids = np.asarray(ids).astype(str)
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise ValueError(f"{kind} vectors must have shape (n, {dim}) like the model's cf "
                         f"output, got {vectors.shape}")
    if ids.shape != (len(vectors),) or len(ids) == 0:
        raise ValueError(f"{kind}: {ids.shape} ids for {len(vectors)} vectors; need one id "
                         "per vector and at least one")
    if len(set(ids.tolist())) != len(ids):
        raise ValueError(f"{kind}: the ids are not unique")
    if not np.all(np.isfinite(vectors)):
        raise ValueError(f"{kind} vectors contain NaN or infinite values")
    return ids, vectors


class CFTables(tf.Module):
    """The catalogue and user tables as variables, tracked into the SavedModel; with
    `index_items`, also a hash table item id -> row of the item table (classify_items)."""

    def __init__(self, tables, index_items=False):
        super().__init__(name="cf_tables")
        for kind, (ids, vectors) in tables.items():
            setattr(self, f"{kind}_ids", tf.Variable(ids, trainable=False, name=f"{kind}_ids"))
            setattr(self, f"{kind}_vectors",
                    tf.Variable(vectors, trainable=False, name=f"{kind}_vectors"))
        if index_items:
            ids = tables["item"][0]
            self.item_rows = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(tf.constant(ids, tf.string),
                                                    tf.range(len(ids), dtype=tf.int64)),
                default_value=-1, name="item_rows")

    def item_cf_input(self, item_ids, cf_mean, cf_scale):
        """The hybrid model's CF input for each id: [(vector - mean) / scale, 1] for an id of
        the item table, zeros (the image-only path) for an empty or unknown one. Any bytes are
        a valid key (non-UTF-8, any length): an id is only compared, never decoded."""
        rows = self.item_rows.lookup(item_ids)
        known = (rows >= 0) & (tf.strings.length(item_ids) > 0)
        vectors = tf.gather(self.item_vectors, tf.maximum(rows, 0))
        scaled = (vectors - cf_mean) / cf_scale
        indicator = tf.cast(known, tf.float32)[:, None]
        return tf.concat([scaled * indicator, indicator], axis=1)


def top_k_by_dot(embedding, ids, vectors, k):
    """Top-k rows of `vectors` by dot product with each embedding.

    Dot product, not cosine: the two-tower model scores user . item and was trained
    on that score without normalising, so a vector's length carries signal (items
    with more, more consistent interactions sit further out) and dot product is
    the geometry the vectors live in. Cosine would promote rarely seen items whose
    short vectors are mostly noise. The ranking is unaffected by the length of the
    predicted embedding itself.
    """
    scores, index = tf.math.top_k(tf.matmul(embedding, vectors, transpose_b=True), k=k)
    return tf.gather(ids, index), scores
