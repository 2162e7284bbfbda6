"""Flags that size an allocation are bounded while the flags are parsed (cfimage/train_flags.py),
before any data is read: a typo such as --image_size=10000x10000 must not allocate GiBs."""

import pytest
from absl import flags

from cfimage import config as config_lib
from tests.test_config import config_of, parse


@pytest.mark.parametrize("argv, message", [
    (["--image_size=10000x10000"], "flag --image_size=10000x10000: use N or HxW with sides >= 32 "
     "and <= 1024"),
    (["--image_size=2048"], "sides above 1024 px are refused"),
    (["--image_size=64x1025"], "sides >= 32 and <= 1024"),
    (["--batch_size=100000"], "--batch_size must be <= 4,096 and batch x height x width <= "
     "134,217,728 pixels"),
    (["--batch_size=256", "--image_size=1024"], "lower --batch_size or --image_size"),
    (["--cf_dim=1000000"], "flag --cf_dim=1000000: must be <= 1024"),
    (["--cf_shuffle_buffer=0"], "flag --cf_shuffle_buffer=0: must be in [1, 10^8]"),
    (["--cf_shuffle_buffer=1000000000"], "must be in [1, 10^8] rows"),
    (["--cf_recall_k=1000000"], "flag --cf_recall_k=1000000: must be <= 10000"),
    (["--demo_items=100000000"], "flag --demo_items=100000000: must be in [1, 10^6]"),
    (["--demo_users=0"], "flag --demo_users=0: must be in [1, 10^6]"),
    (["--threads=100000"], "flag --threads=100000: must be <= 1024"),
    (["--cache_limit_gb=1e9"], "must be <= this machine's memory"),
])
def test_flags_that_size_an_allocation_are_bounded_when_parsed(argv, message):
    with pytest.raises(flags.IllegalFlagValueError) as error:
        parse(*argv)
    assert message in str(error.value)


def test_the_largest_allowed_sizes_still_parse():
    config = config_of("--image_size=1024x32", "--batch_size=4096", "--cf_dim=1024")
    assert config.stage2.image_size == (1024, 32)
    assert config_of("--image_size=1024", "--batch_size=128").stage2.batch_size == 128
    assert config_lib.parse_image_size("1025") is None
    assert config_lib.parse_image_size("1024x1024") == (1024, 1024)
