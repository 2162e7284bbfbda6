"""Unreadable images, found before training: fail naming the first, or leave those items out
and list them in <workdir>/skipped_images.csv (--on_bad_image)."""

import os

import numpy as np
import pandas as pd

from cfimage.catalogue import reader
from cfimage.errors import UserError
from cfimage.stage2 import data


def drop_unreadable_images(catalogue, spec, on_bad_image, workdir, log=print):
    """Decodes every image of `catalogue` once. With none unreadable, returns it unchanged;
    otherwise raises a UserError naming the first (`on_bad_image="fail"`), or returns the
    catalogue without those items and writes them to <workdir>/skipped_images.csv ("skip")."""
    bad = data.find_unreadable_images(catalogue.image_paths, log=log)
    if not bad:
        return catalogue
    first = min(bad)
    where = (f"{os.path.join(catalogue.root, spec.items_file)}, line {first + 2}, item "
             f"{str(catalogue.item_ids[first])!r}")
    if on_bad_image == "fail":
        raise UserError(
            f"{where}: image {catalogue.image_paths[first]} cannot be read "
            f"({bad[first]}); {len(bad)} unreadable image(s) in all. Fix or remove them, "
            "or pass --on_bad_image=skip to leave those items out.")
    rows = sorted(bad)
    skipped = pd.DataFrame({"item_id": catalogue.item_ids[rows],
                            "image": catalogue.image_paths[rows],
                            "reason": [bad[i] for i in rows]})
    path = os.path.join(workdir, "skipped_images.csv")
    skipped.to_csv(path, index=False)
    log(f"skipped {len(bad)} item(s) with unreadable images (--on_bad_image=skip): "
        f"{', '.join(skipped.item_id[:20])}{' ...' if len(bad) > 20 else ''}; list in {path}")
    return reader.drop_items(catalogue, np.isin(np.arange(catalogue.num_items), rows))
