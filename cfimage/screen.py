r"""Screening report: several experiments' arms against their shared image-only cells.

    python -m cfimage.screen --out=docs/results/movielens_variants \
        --results=mult_vae=docs/results/movielens_variants/mult_vae,cosine=runs/exp_cosine

Each --results entry NAME=DIR is a `cfimage.experiment` workdir (or a folder with its
results.csv) that ran other stage-1 or stage-2 options on the same catalogue, seeds and label
ratios (an option that changes the CF vectors or a flag of every cell needs a workdir of its
own). The image-only cells must agree between them: they are the one baseline every arm is
paired with. --same_option=NAME=OTHER,... marks NAME as OTHER's option at another value of
its own knob: that knob is then chosen on validation like λ, and only the chosen value is
tested. Writes <out>/screening.md and screening.csv (every arm at the λ chosen on
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
flags.DEFINE_list("same_option", [], "NAME=OTHER entries: experiment NAME runs the option of "
                  "experiment OTHER at another value of that option's own knob (an InfoNCE "
                  "temperature, a number of components); per arm and label ratio only the one "
                  "with the better validation mAP is tested.")
flags.DEFINE_string("out", None, "Folder of screening.md and screening.csv.")
flags.mark_flags_as_required(["results", "out"])


def log(message):
    print(f"[screen] {message}", flush=True)


def parse_results(entries, flag="results", form="NAME=DIR"):
    """{name: value} from NAME=VALUE entries of --`flag`, in the order given."""
    named = {}
    for entry in entries:
        name, sep, location = entry.partition("=")
        if not sep or not name or not location:
            raise UserError(f"--{flag}: {entry!r} is not {form}")
        if name in named:
            raise UserError(f"--{flag}: the name {name!r} is given twice")
        named[name] = location
    return named


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from cfimage.experiments import screening
    try:
        named = parse_results(FLAGS.results)
        same_option = parse_results(FLAGS.same_option, "same_option", "NAME=OTHER")
        rows = screening.write(FLAGS.out, named, " ".join(["python -m cfimage.screen",
                                                           *sys.argv[1:]]), log=log,
                               same_option=same_option)
    except UserError as error:
        sys.exit(f"cfimage.screen: error: {error}")
    log(f"{len(rows)} arm(s) compared; wrote {os.path.join(FLAGS.out, 'screening.md')}")


if __name__ == "__main__":
    app.run(main)
