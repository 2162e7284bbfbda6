"""The run config (cfimage/config.py) built from cfimage.train's flags (cfimage/train_flags.py),
and the flagfiles under configs/: every flag they use exists, and their header documents the
run."""

import dataclasses
import glob
import json
import os
import subprocess
import sys

import pytest
from absl import flags

from cfimage import config as config_lib
from cfimage import train_flags
from cfimage.errors import UserError
from cfimage.stage1.two_tower import TwoTowerConfig

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.cfg")))


def parse(*argv):
    """cfimage.train's flags in a fresh FlagValues, parsed from `argv`."""
    flag_values = flags.FlagValues()
    train_flags.define_flags(flag_values)
    flag_values(["cfimage.train", *argv])
    return flag_values


def config_of(*argv):
    return config_lib.from_flags(parse(*argv))


def test_defaults_are_stage_1s_own_and_every_value_is_in_the_config():
    config = config_of()
    assert config.stage1.two_tower == TwoTowerConfig()  # no value patched in after parsing
    assert (config.stage2.arm, config.stage2.cf_weight, config.stage2.cf_confidence) == (
        "multitask", 2.0, "uniform")
    assert config.stage2.image_size == (64, 64) and config.stage2.split == (0.7, 0.1, 0.2)
    assert config.output.model_name == "cfimage_demo"
    assert config.output.workdir == os.path.abspath(os.path.join("runs", "cfimage_demo"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.stage2.epochs = 3


def test_stage_1_flags_reach_the_two_tower_config():
    config = config_of("--cf_dim=16", "--cf_epochs=7", "--cf_learning_rate=0.05",
                       "--cf_temperature=0.5", "--cf_holdout=0.2", "--seed=3",
                       "--image_size=96x64", "--split=0.6,0.2,0.2")
    assert config.stage1.two_tower == TwoTowerConfig(
        embedding_dim=16, epochs=7, learning_rate=0.05, temperature=0.5, holdout_fraction=0.2,
        seed=3)
    assert config.stage2.image_size == (96, 64) and config.stage2.split == (0.6, 0.2, 0.2)


@pytest.mark.parametrize("argv, arm, cf_weight, confidence", [
    (["--arm=multitask", "--cf_weight=3", "--cf_confidence=loss"], "multitask", 3.0, "loss"),
    (["--arm=image_only", "--cf_weight=3"], "image_only", 0.0, "uniform"),
    (["--arm=multitask_sqrt", "--cf_weight=1"], "multitask_sqrt", 1.0, "sqrt"),
    (["--arm=multitask_loss"], "multitask_loss", 2.0, "loss"),
    (["--arm=two_stage", "--cf_weight=3"], "two_stage", 0.0, "uniform"),
    (["--arm=hybrid", "--cf_weight=3"], "hybrid", 0.0, "uniform"),
    (["--arm=hybrid+multitask", "--cf_weight=0.5", "--cf_confidence=sqrt"], "hybrid+multitask",
     0.5, "sqrt"),
    (["--arm=contrastive", "--cf_weight=0.5", "--cf_confidence=sqrt"], "contrastive", 0.5,
     "sqrt"),
    (["--arm=distill", "--cf_weight=3"], "distill", 0.0, "uniform"),
    (["--arm=distill+multitask", "--cf_weight=0.5", "--cf_confidence=sqrt"],
     "distill+multitask", 0.5, "sqrt"),
])
def test_the_arm_decides_lambda_and_confidence(argv, arm, cf_weight, confidence):
    stage2 = config_of(*argv).stage2
    assert (stage2.arm, stage2.cf_weight, stage2.cf_confidence) == (arm, cf_weight, confidence)


@pytest.mark.parametrize("argv, message", [
    (["--arm=multitask_sqrt", "--cf_confidence=loss"],
     "--arm=multitask_sqrt weighs the CF loss by 'sqrt', but --cf_confidence=loss"),
    (["--backbone=resnet50"], "--backbone=resnet50: unknown backbone 'resnet50'; choose one of "
     "efficientnet_b0"),
    (["--weights=/no/such.weights.h5"], "--weights='/no/such.weights.h5': no such file"),
    (["--split=0.5,0.5"], "--split=0.5,0.5: give three fractions"),
    (["--split=0.7,0.2,0.2"], "fractions must each be > 0 and sum to 1"),
    (["--split=a,b,c"], "--split=a,b,c: give three fractions"),
    (["--cf_dim=0"], "stage-1 flags (--cf_dim, --cf_holdout, --cf_epochs, ...): TwoTowerConfig: "
     "embedding_dim must be >= 1"),
    (["--cf_holdout=1"], "holdout_fraction must be in [0, 1)"),
    (["--strategy=multi_worker"], "--strategy=multi_worker needs --cf_embeddings"),
    (["--arm=hybrid", "--cf_confidence=sqrt"],
     "--arm=hybrid weighs the CF loss by 'uniform', but --cf_confidence=sqrt"),
    (["--warm_buckets=10,1"], "--warm_buckets=10,1: give increasing interaction counts >= 1"),
    (["--warm_buckets=0,5"], "--warm_buckets=0,5: give increasing interaction counts >= 1"),
    (["--warm_buckets=a"], "--warm_buckets=a: give increasing interaction counts >= 1"),
])
def test_values_that_cannot_run_are_user_errors(argv, message):
    with pytest.raises(UserError) as error:
        config_of(*argv)
    assert message in str(error.value)


def test_hybrid_settings_reach_the_config():
    stage2 = config_of("--arm=hybrid", "--cf_input_dropout=0.25", "--warm_buckets=5,50").stage2
    assert (stage2.cf_input_dropout, stage2.warm_buckets) == (0.25, (5, 50))
    assert stage2.arm_spec.cf_input and not config_of().stage2.arm_spec.cf_input
    assert config_of().stage2.warm_buckets == (1, 10, 100, 1000)


def test_the_distillation_weight_reaches_the_config_of_the_distill_arms_only():
    assert config_of("--arm=distill", "--distill_weight=0.25").stage2.distill_weight == 0.25
    assert config_of("--arm=distill+multitask").stage2.distill_weight == 1.0  # the default
    assert config_of("--arm=multitask", "--distill_weight=0.25").stage2.distill_weight == 0.0


def test_multi_worker_runs_with_vectors_or_as_stage_1_only():
    assert config_of("--strategy=multi_worker", "--cf_embeddings=v.npz").stage2.strategy == \
        "multi_worker"
    assert config_of("--strategy=multi_worker", "--stage1_only").output.stage1_only


@pytest.mark.parametrize("argv, message", [
    (["--label_ratio=0"], "flag --label_ratio=0.0: must be in (0, 1]"),
    (["--label_ratio=1.5"], "flag --label_ratio=1.5: must be in (0, 1]"),
    (["--cf_weight=-1"], "flag --cf_weight=-1.0: λ must be >= 0"),
    (["--image_size=8"], "flag --image_size=8: use N or HxW with sides >= 32"),
    (["--image_size=64x"], "flag --image_size=64x: use N or HxW with sides >= 32"),
    (["--epochs=0"], "--epochs and --batch_size must be >= 1."),
    (["--batch_size=0"], "--epochs and --batch_size must be >= 1."),
    (["--max_loss=-1"], "flag --max_loss=-1.0: must be >= 0"),
    (["--cache_limit_gb=-1"], "flag --cache_limit_gb=-1.0: must be >= 0"),
    (["--cf_target_scale=0"], "--cf_target_scale must be > 0."),
    (["--dropout=1"], "flag --dropout=1.0: must be in [0, 1)"),
    (["--cf_input_dropout=1.5"], "flag --cf_input_dropout=1.5: must be in [0, 1]"),
    (["--arm=ensemble"], "value should be one of <image_only|multitask|"),
    (["--distill_weight=0"], "flag --distill_weight=0.0: must be in (0, 100]"),
    (["--distill_weight=101"], "flag --distill_weight=101.0: must be in (0, 100]"),
])
def test_single_flag_bounds_stop_the_parse(argv, message):
    with pytest.raises(flags.IllegalFlagValueError) as error:
        parse(*argv)
    assert message in str(error.value)


def test_the_workdir_gets_the_flags_and_the_whole_config(tmp_path):
    flag_values = parse(f"--workdir={tmp_path}/run", "--cf_epochs=3", "--arm=image_only")
    config = config_lib.from_flags(flag_values)
    config_lib.write_workdir(config, train_flags.flagfile_text(flag_values))
    assert "--cf_epochs=3" in (tmp_path / "run" / "flags.txt").read_text()
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert set(saved) == {"catalogue", "stage1", "stage2", "output"}
    two_tower = saved["stage1"]["two_tower"]
    assert set(two_tower) == {field.name for field in dataclasses.fields(TwoTowerConfig)}
    assert two_tower["epochs"] == 3 and two_tower["learning_rate"] == 0.1
    assert saved["stage2"]["arm"] == "image_only" and saved["stage2"]["cf_weight"] == 0.0
    assert saved["stage2"]["image_size"] == [64, 64]
    assert saved["output"]["workdir"] == str(tmp_path / "run")
    # flags.txt is a flagfile that gives the same config back.
    again = parse(f"--flagfile={tmp_path}/run/flags.txt")
    assert config_lib.from_flags(again) == config


def test_flags_txt_leaves_out_flags_that_are_not_cfimage_settings():
    # TensorFlow imports absl testing, whose --test_random_seed is not a flag of cfimage.train:
    # a flags.txt holding it would not be a --flagfile for a process that lacks it.
    flag_values = parse("--epochs=7")
    flags.DEFINE_integer("test_random_seed", 301, "absl testing's", flag_values=flag_values)
    text = train_flags.flagfile_text(flag_values)
    assert "--epochs=7\n" in text and "--arm=multitask\n" in text
    assert "test_random_seed" not in text


# --- Cached-feature training and fine-tuning (cfimage/stage2/cached.py) ------------------------
def test_cached_training_settings_reach_the_config(tmp_path):
    stage2 = config_of(f"--workdir={tmp_path}/run", "--train_backbone=false",
                       "--adapter_units=256", "--finetune_epochs=3", "--unfreeze=top_blocks:2",
                       "--finetune_learning_rate=5e-5").stage2
    assert (stage2.train_backbone, stage2.adapter_units, stage2.finetune_epochs,
            stage2.unfreeze, stage2.finetune_learning_rate) == (False, 256, 3, "top_blocks:2",
                                                                5e-5)
    assert stage2.feature_cache == str(tmp_path / "run" / "features")  # the default
    shared = config_of("--train_backbone=false", f"--feature_cache={tmp_path}/shared")
    assert shared.stage2.feature_cache == str(tmp_path / "shared")
    end_to_end = config_of().stage2
    assert (end_to_end.train_backbone, end_to_end.feature_cache,
            end_to_end.finetune_epochs) == (True, None, 0)


@pytest.mark.parametrize("argv, message", [
    (["--train_backbone=false", "--tfrecords=shards/items-*"],
     "--train_backbone=false computes backbone features from the image files; it cannot read "
     "--tfrecords=shards/items-*"),
    (["--train_backbone=false", "--strategy=tpu"], "--strategy=tpu is not supported with it"),
    (["--train_backbone=false", "--strategy=multi_worker", "--cf_embeddings=v.npz"],
     "--strategy=multi_worker is not supported with it"),
    (["--finetune_epochs=2"], "--finetune_epochs=2 is the second phase of "
     "--train_backbone=false"),
])
def test_cached_training_refuses_what_it_cannot_do(argv, message):
    with pytest.raises(UserError) as error:
        config_of(*argv)
    assert message in str(error.value)


@pytest.mark.parametrize("argv, message", [
    (["--unfreeze=top_blocks:0"], "flag --unfreeze=top_blocks:0: use all or top_blocks:N"),
    (["--unfreeze=some"], "flag --unfreeze=some: use all or top_blocks:N"),
    (["--adapter_units=-1"], "flag --adapter_units=-1: must be >= 0"),
    (["--finetune_epochs=-1"], "flag --finetune_epochs=-1: must be >= 0"),
    (["--finetune_learning_rate=0"], "flag --finetune_learning_rate=0.0: must be > 0"),
])
def test_cached_training_flag_bounds_stop_the_parse(argv, message):
    with pytest.raises(flags.IllegalFlagValueError) as error:
        parse(*argv)
    assert message in str(error.value)


# --- The flagfiles under configs/ ------------------------------------------------------------

def test_there_are_configs():
    assert len(CONFIGS) >= 5


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_flags_exist_and_header_documents_the_run(path):
    names = set(parse())
    with open(path) as f:
        lines = [line.strip() for line in f if line.strip()]
    header = " ".join(line for line in lines if line.startswith("#"))
    for word in ("Command:", "Runtime:", "Expected:"):
        assert word in header, f"{path}: header lacks {word}"
    for line in lines:
        if line.startswith("--"):
            name = line[2:].split("=", 1)[0]
            assert name in names | {"flagfile"}, f"{path}: unknown flag --{name}"


@pytest.mark.slow
def test_the_entry_point_defines_the_same_flags():
    # In a child process: cfimage.train defines its flags in the global FLAGS on import.
    script = "import cfimage.train; from absl import flags; print(' '.join(flags.FLAGS))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "PYTHONPATH": ROOT})
    assert result.returncode == 0, result.stderr[-2000:]
    assert set(parse()) <= set(result.stdout.split())


def test_cf_model_and_target_and_loss_flags_reach_the_config(tmp_path):
    config = config_of("--cf_model=mult_vae", "--cf_vae_epochs=7", "--cf_vae_batch_size=128",
                       "--cf_vae_learning_rate=0.002", "--cf_vae_beta=0.5",
                       "--cf_vae_latent_dim=16", "--cf_target=pca_whiten:8",
                       "--cf_loss=infonce", "--cf_temperature_stage2=0.2",
                       "--cf_loss_min_interactions=5", f"--workdir={tmp_path}")
    assert config.stage1.two_tower == TwoTowerConfig(
        model="mult_vae", vae_epochs=7, vae_batch_size=128, vae_learning_rate=0.002,
        vae_beta=0.5, vae_latent_dim=16)
    assert config.stage1.cf_target == "pca_whiten:8"
    assert (config.stage2.cf_loss, config.stage2.cf_temperature_stage2,
            config.stage2.cf_loss_min_interactions) == ("infonce", 0.2, 5)
    config_lib.write_workdir(config, "")
    saved = json.load(open(tmp_path / "config.json"))
    assert saved["stage1"]["two_tower"]["model"] == "mult_vae"
    assert saved["stage1"]["two_tower"]["vae_epochs"] == 7
    assert saved["stage1"]["cf_target"] == "pca_whiten:8"
    assert saved["stage2"]["cf_loss"] == "infonce"
    default = config_of()
    assert (default.stage1.two_tower.model, default.stage1.cf_target, default.stage2.cf_loss,
            default.stage2.cf_loss_min_interactions) == ("two_tower", "standardised", "paper", 0)


@pytest.mark.parametrize("argv, message", [
    (["--arm=contrastive", "--cf_loss=mse"], "--arm=contrastive trains a triplet loss on the CF "
     "head; --cf_loss=mse replaces"),
    (["--cf_loss=score", "--cf_embeddings=v.npz"], "--cf_loss=score matches the scores of "
     "stage 1's users, but --cf_embeddings=v.npz brings no user vectors"),
    (["--cf_user_embeddings=u.npz"], "--cf_user_embeddings=u.npz goes with --cf_embeddings"),
    (["--arm=hybrid", "--cf_target=l2"], "--arm=hybrid feeds the items' CF vectors to the "
     "model; with --cf_target=l2"),
    (["--arm=hybrid+multitask", "--cf_target=pca_whiten:4"], "use --cf_target=standardised or "
     "raw with the hybrid arms"),
])
def test_cf_loss_contradictions_are_user_errors(argv, message):
    with pytest.raises(UserError) as error:
        config_of(*argv)
    assert message in str(error.value)
    assert config_of("--cf_loss=score", "--cf_embeddings=v.npz",
                     "--cf_user_embeddings=u.npz").stage2.cf_loss == "score"


@pytest.mark.parametrize("argv, message", [
    (["--cf_model=bpr"], "value should be one of <two_tower|mult_vae|svd>"),
    (["--cf_vae_epochs=0"], "flag --cf_vae_epochs=0: must be in [1, 100000]"),
    (["--cf_vae_batch_size=100000"], "flag --cf_vae_batch_size=100000: must be in [1, 65536]"),
    (["--cf_vae_learning_rate=0"], "flag --cf_vae_learning_rate=0.0: must be in (0, 10]"),
    (["--cf_vae_beta=-1"], "flag --cf_vae_beta=-1.0: must be in [0, 1000]"),
    (["--cf_vae_latent_dim=0"], "flag --cf_vae_latent_dim=0: must be in [1, 1024]"),
    (["--cf_target=pca_whiten:0"], "flag --cf_target=pca_whiten:0: use standardised, l2, raw "
     "or pca_whiten:K with K >= 1"),
    (["--cf_target=zscore"], "flag --cf_target=zscore: use standardised"),
    (["--cf_loss=huber"], "value should be one of <paper|mse|cosine|infonce|score>"),
    (["--cf_temperature_stage2=0"], "flag --cf_temperature_stage2=0.0: must be in [0.001, 100]"),
    (["--cf_loss_min_interactions=-1"], "flag --cf_loss_min_interactions=-1: must be >= 0"),
])
def test_cf_option_bounds_stop_the_parse(argv, message):
    with pytest.raises(flags.IllegalFlagValueError) as error:
        parse(*argv)
    assert message in str(error.value)
