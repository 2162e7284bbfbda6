"""A tiny interaction log with planted structure, shared by the stage-1 tests: users of group
g only touch items of group g."""

import numpy as np
import pandas as pd

GROUPS = ("a", "b", "c")
CATALOGUE = [f"{group}{j}" for group in GROUPS for j in range(10)] + ["ghost"]
FAST = dict(embedding_dim=8, epochs=30, batch_size=32, learning_rate=0.1, temperature=0.5,
            holdout_fraction=0.3, recall_k=3, svd_rank=4, seed=0)


def planted_log(n_users=20, n_items=10, per_user=8, seed=0):
    """User group g only touches item group g, plus an image-less item "x0" that all use."""
    rng = np.random.default_rng(seed)
    rows = []
    for group in GROUPS:
        items = [f"{group}{j}" for j in range(n_items)]
        # Skewed popularity inside a group, so that the baseline is not trivially bad.
        p = np.linspace(2, 1, n_items)
        for u in range(n_users):
            user = f"u{group}{u}"
            for item in rng.choice(items, size=per_user, replace=False, p=p / p.sum()):
                rows.append((user, item, 1.0))
            rows.append((user, "x0", 1.0))
    return pd.DataFrame(rows, columns=["user_id", "item_id", "weight"])
