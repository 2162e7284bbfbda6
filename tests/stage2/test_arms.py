"""The arm table (cfimage/stage2/arms.py): λ rules, pre-training, confidence, grid values."""

import pytest

from cfimage.stage2 import arms


def test_the_runner_and_training_arm_names_are_all_there():
    assert list(arms.ARMS) == ["image_only", "multitask", "multitask_sqrt", "multitask_loss",
                               "two_stage", "contrastive", "hybrid", "hybrid+multitask",
                               "distill", "distill+multitask"]
    assert arms.BASELINE in arms.ARMS
    assert all(arm.cf_loss in (arms.RECONSTRUCTION, arms.TRIPLET) for arm in arms.ARMS.values())


@pytest.mark.parametrize("name, cf_weight, confidence, pretrain, cf_loss", [
    ("image_only", 0.0, "uniform", False, arms.RECONSTRUCTION),
    ("multitask", 1.5, "loss", False, arms.RECONSTRUCTION),
    ("multitask_sqrt", 1.5, "sqrt", False, arms.RECONSTRUCTION),
    ("multitask_loss", 1.5, "loss", False, arms.RECONSTRUCTION),
    ("two_stage", 0.0, "loss", True, arms.RECONSTRUCTION),
    ("contrastive", 1.5, "loss", False, arms.TRIPLET),
    ("hybrid", 0.0, "uniform", False, arms.RECONSTRUCTION),
    ("hybrid+multitask", 1.5, "loss", False, arms.RECONSTRUCTION),
    ("distill", 0.0, "uniform", False, arms.RECONSTRUCTION),
    ("distill+multitask", 1.5, "loss", False, arms.RECONSTRUCTION),
])
def test_each_arm_given_lambda_1_5_and_loss_weights(name, cf_weight, confidence, pretrain,
                                                    cf_loss):
    arm = arms.get(name)
    assert arm.cf_weight(1.5) == cf_weight
    assert arm.confidence_weighting("loss") == confidence
    assert (arm.pretrain, arm.cf_loss) == (pretrain, cf_loss)


def test_only_the_hybrid_arms_take_the_cf_vector_as_an_input():
    assert [name for name, arm in arms.ARMS.items() if arm.cf_input] == ["hybrid",
                                                                         "hybrid+multitask"]


def test_only_the_distill_arms_read_the_distillation_weight():
    assert [name for name, arm in arms.ARMS.items() if arm.distill] == ["distill",
                                                                        "distill+multitask"]
    assert arms.get("distill").distill_weight(0.3) == 0.3
    assert arms.get("distill+multitask").distill_weight(2) == 2.0
    assert arms.get("multitask").distill_weight(0.3) == 0.0


def test_grid_lambdas_and_unknown_names():
    assert arms.get("multitask").grid_lambdas(["1", "2"]) == ["1", "2"]
    assert arms.get("image_only").grid_lambdas(["1", "2"]) == [0.0]
    assert arms.get("two_stage").grid_lambdas(["1", "2"]) == [1.0]
    assert arms.get("hybrid").grid_lambdas(["1", "2"]) == [0.0]
    assert arms.get("hybrid+multitask").grid_lambdas(["1", "2"]) == ["1", "2"]
    assert arms.get("distill").grid_lambdas(["1", "2"]) == [0.0]
    assert arms.get("distill+multitask").grid_lambdas(["1", "2"]) == ["1", "2"]
    with pytest.raises(ValueError, match="unknown arm 'ensemble'; choose one of image_only, "):
        arms.get("ensemble")
