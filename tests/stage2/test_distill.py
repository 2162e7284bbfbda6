"""The distill arms (cfimage/stage2/distill.py, losses.Distilled*): the distillation loss by
hand on 3-item batches, a teacher that never reads validation or test items (nor the masked
labels of training items), a planted case where the CF vectors decide the labels, and the arms
trained on cached features, end to end and through `python -m cfimage.train`."""

import dataclasses
import json
import math
import os

import numpy as np
import pytest

from cfimage.stage2 import distill, losses, trainer
from cfimage.stage2 import inputs as inputs_lib
from tests.stage2.test_cached import make_catalogue, quiet, run_config
from tests.stage2.test_inputs import prepare

# --- The distillation loss, by hand --------------------------------------------------------


def test_distilled_bce_by_hand():
    # [labels (2), labelled, soft labels (2), distillation weight]; positive weights 2 and 1.
    y_true = np.array([[1, 0, 1, 0.9, 0.2, 1],  # labelled, has a vector
                       [0, 1, 0, 0.5, 0.5, 1],  # unlabelled, has a vector
                       [0, 0, 0, 0.7, 0.1, 0]], np.float32)  # neither (e.g. validation)
    y_pred = np.array([[0.8, 0.4], [0.5, 0.9], [0.1, 0.1]], np.float32)
    label = -(2 * math.log(0.8) + math.log(0.6)) / 2  # item 1 only: 0.47856
    item1 = -(0.9 * math.log(0.8) + 0.1 * math.log(0.2)
              + 0.2 * math.log(0.4) + 0.8 * math.log(0.6)) / 2  # 0.47685
    item2 = -(0.5 * math.log(0.5) + 0.5 * math.log(0.5)
              + 0.5 * math.log(0.9) + 0.5 * math.log(0.1)) / 2  # 0.94856
    distillation = (item1 + item2) / 2  # item 3 has weight 0
    assert distillation == pytest.approx(0.71270, abs=1e-5)
    loss = losses.DistilledBCE([2.0, 1.0], distill_weight=0.5)(y_true, y_pred)
    assert float(loss) == pytest.approx(label + 0.5 * distillation, rel=1e-5)
    assert float(loss) == pytest.approx(0.83491, abs=1e-5)
    metric = losses.Distillation(multi_label=True)
    metric.update_state(y_true, y_pred)
    assert float(metric.result()) == pytest.approx(distillation, rel=1e-5)
    # The plain label loss on the first C + 1 columns is the first term.
    assert float(losses.MaskedWeightedBCE([2.0, 1.0])(y_true[:, :3], y_pred)) == \
        pytest.approx(label, rel=1e-5)


def test_distilled_cross_entropy_by_hand():
    # Single-label, 3 classes: [one-hot (3), labelled, soft labels (3), weight].
    y_true = np.array([[1, 0, 0, 1, 0.6, 0.3, 0.1, 1],
                       [0, 1, 0, 0, 0.2, 0.2, 0.6, 1],
                       [0, 0, 1, 1, 1.0, 0.0, 0.0, 0]], np.float32)
    y_pred = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.2, 0.2, 0.6]], np.float32)
    label = -(math.log(0.7) + math.log(0.6)) / 2  # items 1 and 3 are labelled
    item1 = -(0.6 * math.log(0.7) + 0.3 * math.log(0.2) + 0.1 * math.log(0.1))
    item2 = -(0.2 * math.log(0.1) + 0.2 * math.log(0.3) + 0.6 * math.log(0.6))
    loss = losses.DistilledCrossEntropy(distill_weight=2.0)(y_true, y_pred)
    assert float(loss) == pytest.approx(label + 2.0 * (item1 + item2) / 2, rel=1e-5)
    assert float(loss) == pytest.approx(2.36865, abs=1e-5)
    assert float(losses.Distillation(multi_label=False, name="d")(y_true, y_pred)) == \
        pytest.approx((item1 + item2) / 2, rel=1e-5)


def test_a_batch_without_vectors_is_the_label_loss_alone():
    y_true = np.array([[1, 0, 1, 0.3, 0.3, 0], [0, 1, 1, 0.3, 0.3, 0]], np.float32)
    y_pred = np.array([[0.6, 0.2], [0.3, 0.7]], np.float32)
    plain = losses.MaskedWeightedBCE([1.0, 3.0])(y_true[:, :3], y_pred)
    assert float(losses.DistilledBCE([1.0, 3.0], 5.0)(y_true, y_pred)) == \
        pytest.approx(float(plain), rel=1e-6)


def test_with_distillation_keeps_the_label_loss_settings():
    bce = losses.with_distillation(losses.MaskedWeightedBCE([2.0, 0.5]), 0.25)
    assert isinstance(bce, losses.DistilledBCE)
    assert (bce.pos_weight, bce.distill_weight) == ([2.0, 0.5], 0.25)
    assert losses.DistilledBCE.from_config(bce.get_config()).get_config() == bce.get_config()
    softmax = losses.with_distillation(losses.MaskedCrossEntropy(), 3.0)
    assert isinstance(softmax, losses.DistilledCrossEntropy) and softmax.distill_weight == 3.0


def test_a_model_compiled_for_distill_saves_and_loads_with_its_loss(tmp_path):
    # The export saves the trained model whole (serving_model.keras, compile config included).
    import keras

    from cfimage.stage2 import fit
    from tests.stage2.test_fit import _tiny_model
    model = _tiny_model()
    fit.compile_model(model, fit.make_optimizer("adamw", 1e-3, 0.0, 1.0, 10),
                      losses.MaskedWeightedBCE([1.5, 1.0]), "distill", 1.0, 0.0, False,
                      distill_weight=0.7)
    model.save(str(tmp_path / "model.keras"))
    loaded = keras.saving.load_model(str(tmp_path / "model.keras"))
    assert isinstance(loaded.loss["labels"], losses.DistilledBCE)
    assert loaded.loss["labels"].get_config() == {"pos_weight": [1.5, 1.0], "name": "distilled_bce",
                                                  "distill_weight": 0.7}


# --- The teacher ------------------------------------------------------------------------------


def planted(num_items=300, multi_label=False, seed=0):
    """CF vectors (n, 4) that decide the labels: single-label argmax of v @ M, or multi-label
    v_c > 0 for the first three dimensions."""
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(num_items, 4)) * 2.0
    if multi_label:
        labels = (vectors[:, :3] > 0).astype(np.float32)
    else:
        labels = np.eye(3, dtype=np.float32)[(vectors @ rng.normal(size=(4, 3))).argmax(axis=1)]
    return vectors, labels


def split_of(num_items, seed=0):
    """Train (first 70%), validation, test rows, and 25% of the training items labelled."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(num_items)
    cut1, cut2 = int(0.7 * num_items), int(0.85 * num_items)
    train, validation, test = (np.sort(order[:cut1]), np.sort(order[cut1:cut2]),
                               np.sort(order[cut2:]))
    labelled = np.ones(num_items, bool)
    labelled[train[rng.random(len(train)) >= 0.25]] = False
    return train, validation, test, labelled


@pytest.mark.parametrize("multi_label", [False, True])
def test_on_a_planted_case_the_soft_labels_are_right_on_unlabelled_training_items(multi_label):
    vectors, labels = planted(multi_label=multi_label)
    train, _, _, labelled = split_of(len(vectors))
    has_vector = np.ones(len(vectors), bool)
    has_vector[train[:5]] = False  # some training items have no vector: no soft labels
    soft, weight, summary = distill.fit_teacher(vectors, has_vector, labels, labelled, train,
                                                multi_label, seed=0)
    students = train[has_vector[train]]
    unlabelled = students[~labelled[students]]
    assert summary["fit_items"] == int(labelled[students].sum()) < 70 < len(unlabelled)
    assert summary["unlabelled_soft_label_items"] == len(unlabelled)
    assert summary["link"] == ("sigmoid" if multi_label else "softmax")
    assert summary["alpha"] in distill.ALPHAS and len(summary["cv_cross_entropy"]) == 6
    np.testing.assert_array_equal(weight > 0, np.isin(np.arange(len(vectors)), students))
    assert not soft[weight == 0].any()  # no soft labels without a vector or outside training
    if multi_label:
        assert np.mean((soft[unlabelled] > 0.5) == (labels[unlabelled] > 0)) > 0.95
    else:
        np.testing.assert_allclose(soft[students].sum(axis=1), 1.0, rtol=1e-5)
        assert np.mean(soft[unlabelled].argmax(axis=1) == labels[unlabelled].argmax(axis=1)) \
            > 0.9
    assert soft[unlabelled][labels[unlabelled] > 0].mean() > 0.75  # confident on the truth


def test_the_teacher_never_reads_validation_test_or_masked_labels():
    vectors, labels = planted(multi_label=True)
    train, validation, test, labelled = split_of(len(vectors))
    has_vector = np.ones(len(vectors), bool)
    soft, weight, summary = distill.fit_teacher(vectors, has_vector, labels, labelled, train,
                                                True, seed=3)
    # Flip every validation, test and masked training label, and scramble the vectors of
    # validation and test items: the teacher and its soft labels are identical.
    hidden = np.concatenate([validation, test, train[~labelled[train]]])
    flipped = labels.copy()
    flipped[hidden] = 1.0 - flipped[hidden]
    scrambled = vectors.copy()
    scrambled[np.concatenate([validation, test])] *= -7.0
    again = distill.fit_teacher(scrambled, has_vector, flipped, labelled, train, True, seed=3)
    np.testing.assert_array_equal(again[0], soft)
    np.testing.assert_array_equal(again[1], weight)
    assert again[2] == summary
    # Not a test that cannot fail: flipping the labels it does read changes the soft labels.
    read = train[labelled[train]]
    flipped[read] = 1.0 - flipped[read]
    changed = distill.fit_teacher(scrambled, has_vector, flipped, labelled, train, True, seed=3)
    assert np.abs(changed[0] - soft).max() > 0.5


def test_alpha_is_cross_validated_on_the_labelled_items_or_fixed():
    vectors, labels = planted(num_items=40)
    train, _, _, _ = split_of(40)
    few = np.zeros(40, bool)
    few[train[:5]] = True  # 5 labelled training items: fewer than 2 x 3 folds
    _, _, summary = distill.fit_teacher(vectors, np.ones(40, bool), labels, few, train, False)
    assert (summary["alpha"], summary["cv_cross_entropy"]) == (distill.DEFAULT_ALPHA, {})
    assert summary["alpha_from"].startswith("default")
    _, _, summary = distill.fit_teacher(vectors, np.ones(40, bool), labels, few, train, False,
                                        alpha=0.5)
    assert (summary["alpha"], summary["alpha_from"]) == (0.5, "fixed")
    with pytest.raises(ValueError, match="needs labelled training items with a CF vector"):
        distill.fit_teacher(vectors, np.zeros(40, bool), labels, few, train, False)


def test_the_fit_minimises_the_penalised_cross_entropy():
    # With one feature and α large, the weight shrinks to ~0 and the bias gives the base rate.
    features = np.array([[-1.0], [1.0], [-1.0], [1.0]])
    labels = np.array([[0.0], [1.0], [1.0], [1.0]])
    weights = distill.fit_linear(features, labels, 1e4, multi_label=True)
    assert abs(weights[0, 0]) < 1e-3
    assert distill.predict(weights, features, True)[:, 0] == pytest.approx([0.75] * 4, abs=1e-3)


@pytest.mark.parametrize("multi_label", [True, False])
def test_the_gradient_of_the_fit_matches_finite_differences(multi_label, monkeypatch):
    # Through scipy's check on the objective fit_linear minimises: multi-hot rows under the
    # softmax too (--task=single_label on a multi-label catalogue).
    from scipy import optimize
    rng = np.random.default_rng(2)
    features, labels = rng.normal(size=(12, 3)), (rng.random((12, 4)) < 0.4).astype(float)
    labels[:, 0] = 1.0
    captured = {}

    def spy(objective, start, **kwargs):
        captured["objective"] = objective
        return optimize.OptimizeResult(x=start)

    monkeypatch.setattr(distill.optimize, "minimize", spy)
    distill.fit_linear(features, labels, 0.3, multi_label)
    point = rng.normal(size=4 * 4)
    error = optimize.check_grad(lambda w: captured["objective"](w)[0],
                                lambda w: captured["objective"](w)[1], point)
    assert error < 1e-5


# --- Stage 2 inputs and training ---------------------------------------------------------------


@pytest.fixture(scope="module")
def catalogue_root(tmp_path_factory):
    return make_catalogue(tmp_path_factory)


def test_inputs_pack_the_soft_labels_of_training_items_only(catalogue_root, tmp_path):
    catalogue, inputs, stage2, runtime, _, has_vector, lines = prepare(
        catalogue_root, str(tmp_path), "--arm=distill", "--label_ratio=0.5",
        "--distill_weight=0.3")
    assert (stage2.distill_weight, stage2.cf_weight) == (0.3, 0.0)
    num_classes = catalogue.num_classes
    targets = inputs.targets["labels"]
    assert targets.shape == (catalogue.num_items, 2 * num_classes + 2)
    np.testing.assert_array_equal(targets[:, :num_classes], catalogue.labels)
    np.testing.assert_array_equal(targets[:, num_classes], inputs.labelled)
    train = inputs.splits["train"]
    expected = np.zeros(catalogue.num_items, bool)
    expected[train[has_vector[train]]] = True
    np.testing.assert_array_equal(targets[:, -1] > 0, expected)
    assert not targets[~expected, num_classes + 1:].any()
    with open(os.path.join(runtime.outdir, "distill_teacher.json")) as f:
        assert json.load(f) == inputs.teacher
    assert inputs.teacher["fit_items"] == int((inputs.labelled & expected).sum())
    assert any(line.startswith("distill teacher (") for line in lines)


def test_inputs_soft_labels_ignore_the_validation_and_test_labels(catalogue_root, tmp_path):
    config, catalogue, runtime = run_config(catalogue_root, str(tmp_path), "--arm=distill",
                                            "--label_ratio=0.5")
    vectors = np.random.default_rng(0).normal(size=(catalogue.num_items, 6))
    has_vector = np.arange(catalogue.num_items) % 5 != 0

    def soft_labels(labels):
        prepared = inputs_lib.prepare(
            dataclasses.replace(catalogue, labels=labels), vectors, has_vector, config.stage2,
            0.5, "auto", runtime.global_batch, runtime.outdir,
            count_interactions=lambda: np.ones(catalogue.num_items), log=quiet)
        return prepared.targets["labels"][:, catalogue.num_classes + 1:], prepared.splits

    soft, splits = soft_labels(catalogue.labels)
    hidden = np.concatenate([splits["validation"], splits["test"]])
    changed = catalogue.labels.copy()
    changed[hidden] = 1.0 - changed[hidden]
    np.testing.assert_array_equal(soft_labels(changed)[0], soft)
    changed[splits["train"]] = 1.0 - changed[splits["train"]]  # these it reads
    assert np.abs(soft_labels(changed)[0] - soft).max() > 0.1


def test_a_split_without_labelled_training_vectors_is_a_user_error(catalogue_root, tmp_path):
    from cfimage.errors import UserError
    config, catalogue, runtime = run_config(catalogue_root, str(tmp_path), "--arm=distill",
                                            "--label_ratio=0.3")
    # Vectors for the training items whose labels the mask drops, as inputs.prepare draws it.
    from cfimage.stage2 import data
    train = data.split_items(catalogue.num_items, catalogue.labelled, config.stage2.split,
                             0)["train"]
    labelled = data.mask_labels(catalogue.labelled, train, 0.3, 0)
    has_vector = np.isin(np.arange(catalogue.num_items), train) & ~labelled
    assert has_vector.any()
    with pytest.raises(UserError, match=r"--arm=distill: the distill teacher needs labelled "
                                        r"training items with a CF vector, and this split has "
                                        r"none; raise --label_ratio or use another arm"):
        inputs_lib.prepare(catalogue, np.random.default_rng(0).normal(
                               size=(catalogue.num_items, 6)), has_vector, config.stage2, 0.5,
                           "auto",
                           runtime.global_batch, runtime.outdir,
                           count_interactions=lambda: np.ones(catalogue.num_items), log=quiet)


def check_trained(result, runtime, stage2, inputs, tag=""):
    assert isinstance(result.model.loss["labels"], (losses.DistilledBCE,
                                                    losses.DistilledCrossEntropy))
    assert result.model.loss["labels"].distill_weight == stage2.distill_weight
    history = open(os.path.join(runtime.outdir, f"history{tag}.csv")).read().splitlines()
    header, row = history[0].split(","), history[-1].split(",")
    value = {name: float(row[header.index(name)])
             for name in ("labels_distill", "val_labels_distill")}
    assert np.isfinite(value["labels_distill"]) and value["labels_distill"] > 0
    assert value["val_labels_distill"] == 0.0  # validation items have no soft labels
    # The CF head's weight is the arm's λ (0 for distill); the distillation is in labels_loss.
    assert result.model.get_compile_config()["loss_weights"] == {"labels": 1.0,
                                                                 "cf": stage2.cf_weight}
    assert result.summary["distill_weight"] == stage2.distill_weight
    assert result.summary["teacher"] == inputs.teacher
    scores = result.model.predict(result.test, verbose=0)["labels"]
    assert np.all(np.isfinite(scores))


# 9 s and more each (feature extraction, tracing): the slow tier. The fast tier compiles and
# evaluates the distill arms (tests/stage2/test_fit.py) and checks the loss by hand above.
@pytest.mark.slow
@pytest.mark.parametrize("arm, extra", [
    ("distill", []),
    ("distill+multitask", ["--cf_weight=0.5", "--finetune_epochs=1"]),
])
def test_the_distill_arms_train_on_cached_features(catalogue_root, tmp_path, arm, extra):
    catalogue, inputs, stage2, runtime, _, _, lines = prepare(
        catalogue_root, str(tmp_path / "run"), f"--arm={arm}", "--label_ratio=0.5",
        "--distill_weight=2", f"--feature_cache={tmp_path.parent / 'distill_features'}",
        *extra)
    result = trainer.train(catalogue, inputs, 6, stage2, runtime, log=lines.append)
    check_trained(result, runtime, stage2, inputs, "_finetune" if extra else "")
    assert stage2.cf_weight == (0.5 if extra else 0.0)


@pytest.mark.slow
def test_the_distill_arm_trains_end_to_end(catalogue_root, tmp_path):
    catalogue, inputs, stage2, runtime, _, _, lines = prepare(
        catalogue_root, str(tmp_path / "run"), "--arm=distill", "--train_backbone=true",
        "--label_ratio=0.5", "--image_size=32")
    assert inputs.train is not None  # the image pipeline, with the packed soft labels
    result = trainer.train(catalogue, inputs, 6, stage2, runtime, log=lines.append)
    check_trained(result, runtime, stage2, inputs)
    assert result.summary["train_backbone"] is True


@pytest.mark.slow
def test_cfimage_train_runs_the_distill_arm_and_records_it(tmp_path):
    from tests.test_train import CACHED, TINY, run_train
    result = run_train(TINY + CACHED + [f"--workdir={tmp_path}/run", "--noexport", "--threads=1",
                                        "--arm=distill", "--label_ratio=0.5",
                                        "--distill_weight=0.5"], cwd=str(tmp_path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "distill teacher (sigmoid on CF vectors, L2 α = " in result.stdout
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert (metrics["arm"], metrics["distill_weight"], metrics["cf_weight"]) == (
        "distill", 0.5, 0.0)
    teacher = json.loads((run / "distill_teacher.json").read_text())
    assert metrics["stage2"]["teacher"] == teacher and metrics["stage2"]["distill_weight"] == 0.5
    assert 0 < teacher["fit_items"] < teacher["soft_label_items"] <= metrics["num_items"]["train"]
    assert metrics["test"]["macro_map"] > 0
    config = json.loads((run / "config.json").read_text())
    assert (config["stage2"]["arm"], config["stage2"]["distill_weight"]) == ("distill", 0.5)
    assert "labels_distill" in (run / "history.csv").read_text().splitlines()[0].split(",")
