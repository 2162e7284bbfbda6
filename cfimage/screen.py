r"""Screening report: several experiments' arms against their shared image-only cells.

    python -m cfimage.screen --out=docs/results/movielens_variants \
        --results=mult_vae=docs/results/movielens_variants/mult_vae,cosine=runs/exp_cosine

Each --results entry NAME=DIR is a `cfimage.experiment` workdir (or a folder with its
results.csv) that ran other stage-1 or stage-2 options on the same catalogue, seeds and label
ratios (an option that changes the CF vectors or a flag of every cell needs a workdir of its
own). The image-only cells must agree between them: they are the one baseline every arm is
paired with. Writes <out>/screening.md and screening.csv (every arm at the λ chosen on
validation, its paired test gain over image-only, Holm-corrected p-values over all of them)
and chosen.csv (per label ratio, the configuration chosen on validation mAP alone: the one to
confirm end to end); cfimage/experiments/screening.py.
"""

import os
import sys

from absl import app
from absl import flags

from cfimage.errors import UserError

FLAGS = flags.FLAGS
flags.DEFINE_list("results", None, "The experiments: NAME=DIR entries, DIR a cfimage.experiment "
                  "workdir or a folder holding its results.csv.")
flags.DEFINE_string("out", None, "Folder of screening.md and screening.csv.")
flags.mark_flags_as_required(["results", "out"])


def log(message):
    print(f"[screen] {message}", flush=True)


def parse_results(entries):
    """{name: directory} from NAME=DIR entries, in the order given."""
    named = {}
    for entry in entries:
        name, sep, location = entry.partition("=")
        if not sep or not name or not location:
            raise UserError(f"--results: {entry!r} is not NAME=DIR")
        if name in named:
            raise UserError(f"--results: the name {name!r} is given twice")
        named[name] = location
    return named


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from cfimage.experiments import screening
    try:
        named = parse_results(FLAGS.results)
        rows = screening.write(FLAGS.out, named, " ".join(["python -m cfimage.screen",
                                                           *sys.argv[1:]]), log=log)
    except UserError as error:
        sys.exit(f"cfimage.screen: error: {error}")
    log(f"{len(rows)} arm(s) compared; wrote {os.path.join(FLAGS.out, 'screening.md')}")


if __name__ == "__main__":
    app.run(main)
