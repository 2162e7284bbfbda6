r"""Writes a catalogue with a large synthetic interaction log, to measure streaming stage 1.

    python scripts/synthetic_interactions.py --out=/tmp/big --rows=5000000 --users=200000 \
        --items=5000
    /usr/bin/time -v python -m cfimage.train --catalogue=/tmp/big --stage1_only \
        --cf_epochs=1 --stream_interactions=true --workdir=/tmp/big_run

(from the repository root with cfimage installed). Items and images are the demo catalogue's
(cfimage/catalogue/demo.py, 32 px); the log replaces its interactions.csv. Each user likes one of
--groups item groups (item i is in group i % groups) and draws 80% of their rows from it,
the rest by global popularity, so recall@k has a planted signal. Rows are in random order
(as a shuffled export would be); --shards > 1 writes interactions-00000-of-N.csv ... instead.
`synthetic_log` is the same log as a DataFrame (scripts/benchmark_stage1.py uses it).
"""

import os

import cfimage  # noqa: F401  (sets the environment before TensorFlow is imported)
import numpy as np
import pandas as pd
from absl import app, flags

from cfimage.catalogue import demo


def synthetic_log(rows, users, items, groups=20, seed=0):
    """user_id, item_id ("item%05d", ids of the demo catalogue), weight (a 1-5 rating)."""
    rng = np.random.default_rng(seed)
    popularity = rng.lognormal(0.0, 1.0, items)
    popularity /= popularity.sum()
    group_of_user = rng.integers(0, groups, users)
    per_group = items // groups
    user = rng.integers(0, users, rows)
    in_group = rng.random(rows) < 0.8
    item = rng.choice(items, size=rows, p=popularity)
    item = np.where(in_group, group_of_user[user] + groups * rng.integers(0, per_group, rows),
                    item)
    rating = rng.integers(1, 6, rows)
    return pd.DataFrame({"user_id": np.char.add("user", user.astype(str)),
                         "item_id": np.char.add("item", np.char.zfill(item.astype(str), 5)),
                         "weight": rating})


def main(argv):
    del argv
    FLAGS = flags.FLAGS
    demo.make_demo_catalogue(FLAGS.out, seed=FLAGS.seed, num_items=FLAGS.items, num_users=10,
                             interactions_per_user=2, image_size=32)
    os.remove(os.path.join(FLAGS.out, "interactions.csv"))
    frame = synthetic_log(FLAGS.rows, FLAGS.users, FLAGS.items, FLAGS.groups, FLAGS.seed)
    for shard, part in enumerate(np.array_split(np.arange(FLAGS.rows), FLAGS.shards)):
        name = ("interactions.csv" if FLAGS.shards == 1
                else f"interactions-{shard:05d}-of-{FLAGS.shards:05d}.csv")
        frame.iloc[part].to_csv(os.path.join(FLAGS.out, name), index=False)
    print(f"{FLAGS.rows} interactions of {FLAGS.users} users on {FLAGS.items} items in "
          f"{FLAGS.shards} file(s) under {FLAGS.out}")


if __name__ == "__main__":
    flags.DEFINE_string("out", None, "Catalogue directory to write.", required=True)
    flags.DEFINE_integer("rows", 5_000_000, "Interactions.")
    flags.DEFINE_integer("users", 200_000, "Users.")
    flags.DEFINE_integer("items", 5000, "Items (each with a 32 px demo image).")
    flags.DEFINE_integer("groups", 20, "Item groups; a user prefers one.")
    flags.DEFINE_integer("shards", 1, "Interaction files.")
    flags.DEFINE_integer("seed", 0, "Seed.")
    app.run(main)
