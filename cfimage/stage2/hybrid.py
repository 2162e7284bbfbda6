"""The hybrid arms (cfimage/stage2/arms.py: `hybrid`, `hybrid+multitask`): the item's own CF
vector is an input of the label head next to the image, so a catalogue item that already has
interactions is classified from both, and a new item from its image alone, by one model.

The CF input of an item is [its scaled CF target (d), 1], or zeros (d + 1) when it has no
vector: the same centring and scaling as the CF head's targets (data.scale_cf_targets), which
the export repeats in-graph on the raw vectors of its table (cfimage/serving/export.py). In
training, model.CFInputDropout zeroes the whole input of --cf_input_dropout of the items each
step (DropoutNet, Volkovs et al. 2017), and the CF branch of the label logits is multiplied by
the indicator, so the zeroed input is exactly the image path (model.image_path).

Views (docs/design.md, "Hybrid arms"):
  * cold: the CF input zeroed for every item, as for a new item. Validation mAP in this view
    chooses the checkpoint, so the chosen epoch never trades cold accuracy for warm gains.
  * warm: the items that have a vector, with their vector given.
Every arm's metrics.json reports both test views (a model without the CF input gives the same
scores in both, restricted to the warm items in the second), and the warm view bucketed by the
items' interaction counts (--warm_buckets), so that arms compare on the same items.

Datasets carry the CF input in their targets dict under "cf_input" (so that every pipeline,
images, TFRecords or cached features, slices and shuffles it with the rest); `with_cf_input`
moves it to the model's inputs after batching.
"""

import numpy as np
import tensorflow as tf

from cfimage.stage2.model import CF_INPUT


def cf_inputs(cf_targets, has_vector):
    """The CF input of every item, (n, d + 1) float32: [scaled vector, 1], zeros without one."""
    has_vector = np.asarray(has_vector, bool)
    vectors = np.where(has_vector[:, None], cf_targets, 0.0)
    return np.concatenate([vectors, has_vector[:, None]], axis=1).astype(np.float32)


def with_cf_input(dataset, input_name, cold=False):
    """Batches (x, {"labels", "cf", "cf_input"}) -> ({input_name: x, "cf_input": ...},
    {"labels", "cf"}); `cold`: the CF input zeroed (the cold view)."""
    def move(x, y):
        cf_input = y[CF_INPUT]
        if cold:
            cf_input = tf.zeros_like(cf_input)
        return ({input_name: x, CF_INPUT: cf_input},
                {key: value for key, value in y.items() if key != CF_INPUT})
    return dataset.map(move, num_parallel_calls=tf.data.AUTOTUNE)


def cold_view(dataset):
    """A hybrid model's batches with the CF input zeroed."""
    return dataset.map(lambda x, y: ({**x, CF_INPUT: tf.zeros_like(x[CF_INPUT])}, y),
                       num_parallel_calls=tf.data.AUTOTUNE)


def bucket_names(edges):
    """Names of the buckets that `edges` (increasing counts) make: "1-9", ..., "1000+"."""
    names = [f"{low}-{high - 1}" if high - 1 > low else f"{low}"
             for low, high in zip(edges[:-1], edges[1:])]
    return names + [f"{edges[-1]}+"]


def buckets(counts, edges):
    """[(name, row mask)] of the items by interaction count: one bucket per edge (from it to
    the next), and "0-<first edge>" first when some items count fewer (vectors from a file)."""
    counts = np.asarray(counts)
    bounds = [*edges, np.inf]
    out = [(name, (counts >= low) & (counts < high))
           for name, low, high in zip(bucket_names(edges), bounds[:-1], bounds[1:])]
    below = counts < edges[0]
    if below.any():
        out.insert(0, (f"0-{edges[0] - 1}" if edges[0] > 1 else "0", below))
    return out
