"""scripts/movielens_screening.sh: its options and its refusal of unknown ones (the runs
themselves are scripts/movielens_cached.sh's, tested in test_movielens_cached.py)."""

import os
import re
import subprocess

from tests.scripts.test_prepare_common import SCRIPTS

SCRIPT = os.path.join(SCRIPTS, "movielens_screening.sh")


def test_unknown_option_is_refused_before_any_work(tmp_path):
    done = subprocess.run(["bash", SCRIPT, "cosine,nonsense"], capture_output=True, text=True,
                          cwd=tmp_path)
    assert done.returncode == 1
    assert "unknown option nonsense" in done.stderr and "mult_vae" in done.stderr


def test_every_option_has_flags_that_cfimage_train_accepts():
    from cfimage import train_flags
    from absl import flags

    text = open(SCRIPT).read()
    options = dict(re.findall(r"^  \[(\w+)\]=(\S+)", text, re.M))
    order = ",".join(re.findall(r"^ORDER=(?:\$ORDER,)?(\S+)", text, re.M)).split(",")
    assert sorted(order) == sorted(options)
    for option, value in options.items():
        values = flags.FlagValues()
        train_flags.define_flags(values)
        values(["train", *value.split(",")])  # raises on an unknown flag or a bad value
