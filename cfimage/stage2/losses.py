"""The losses of docs/method.md, with their masks, plus metrics for the CF terms.

Both losses read a mask packed into y_true as its last column (data.py):
  * labels: y_true = [multi-hot (C), labelled (1)]; the loss averages over
    labelled items only, so unlabelled items add nothing (and the mean is not
    diluted by them);
  * cf: y_true = [target (d), weight (1)]; weight 0 means "no CF vector": the
    item is masked, never dropped, so it still trains the classifier;
  * labels of the distill arms: y_true = [multi-hot (C), labelled (1), teacher's
    soft labels (C), distillation weight (1)] (cfimage/stage2/distill.py).

Losses return one scalar per batch and are computed in float32 whatever the
mixed-precision policy.
"""

import keras
import numpy as np
from keras import ops

EPSILON = 1e-7


def positive_weights(labels, labelled):
    """Per-class positive weight N_labelled / n_pos(c) from the training labels (numpy)."""
    labelled_labels = labels[labelled]
    positives = np.maximum(labelled_labels.sum(axis=0), 1.0)
    return (len(labelled_labels) / positives).astype(np.float32)


@keras.saving.register_keras_serializable("cfimage")
class MaskedWeightedBCE(keras.losses.Loss):
    """Binary cross-entropy with per-class positive weights, over labelled items.

    Per item: mean over classes of -(w_c y log p + (1 - y) log(1 - p)); then
    the mean over the labelled items of the batch (0 when none is labelled).
    """

    def __init__(self, pos_weight, name="masked_weighted_bce", **kwargs):
        super().__init__(name=name, reduction="sum_over_batch_size", **kwargs)
        self.pos_weight = [float(w) for w in pos_weight]

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, "float32")
        labels, mask = y_true[:, :-1], y_true[:, -1]
        p = ops.clip(ops.cast(y_pred, "float32"), EPSILON, 1.0 - EPSILON)
        w = ops.convert_to_tensor(self.pos_weight, "float32")
        per_item = -ops.mean(w * labels * ops.log(p) + (1.0 - labels) * ops.log(1.0 - p), axis=1)
        return ops.sum(per_item * mask) / ops.maximum(ops.sum(mask), 1.0)

    def get_config(self):
        return {"pos_weight": self.pos_weight, "name": self.name}


@keras.saving.register_keras_serializable("cfimage")
class MaskedCrossEntropy(keras.losses.Loss):
    """Softmax cross-entropy for single-label catalogues, over labelled items."""

    def __init__(self, name="masked_cross_entropy", **kwargs):
        super().__init__(name=name, reduction="sum_over_batch_size", **kwargs)

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, "float32")
        labels, mask = y_true[:, :-1], y_true[:, -1]
        p = ops.clip(ops.cast(y_pred, "float32"), EPSILON, 1.0)
        per_item = -ops.sum(labels * ops.log(p), axis=1)
        return ops.sum(per_item * mask) / ops.maximum(ops.sum(mask), 1.0)


# --- The distill arms (cfimage/stage2/distill.py): the label loss above on [labels, labelled],
# plus distill_weight × the distillation loss on [soft labels, weight], the columns after them.

def distillation_per_item(soft, y_pred, multi_label):
    """Per item: the cross-entropy of the label head's scores against the teacher's soft
    labels q: mean over classes of −(q log p + (1 − q) log(1 − p)) for per-class sigmoids (as
    the label BCE, without positive weights), −Σ q log p for a softmax."""
    p = ops.clip(ops.cast(y_pred, "float32"), EPSILON, 1.0 - EPSILON)
    if multi_label:
        return -ops.mean(soft * ops.log(p) + (1.0 - soft) * ops.log(1.0 - p), axis=1)
    return -ops.sum(soft * ops.log(p), axis=1)


def distillation_loss(y_true, y_pred, multi_label):
    """Σ w_i ℓ_i / Σ w_i over the items of the batch with a distillation weight w_i > 0 (the
    training items with a CF vector); 0 when none has one."""
    y_true = ops.cast(y_true, "float32")
    num_classes = ops.shape(y_pred)[-1]
    soft, weight = y_true[:, num_classes + 1:2 * num_classes + 1], y_true[:, -1]
    per_item = distillation_per_item(soft, y_pred, multi_label)
    return ops.sum(per_item * weight) / ops.maximum(ops.sum(weight), 1.0)


@keras.saving.register_keras_serializable("cfimage")
class DistilledBCE(MaskedWeightedBCE):
    """MaskedWeightedBCE on the labelled items + distill_weight × the distillation loss."""

    def __init__(self, pos_weight, distill_weight=1.0, name="distilled_bce", **kwargs):
        super().__init__(pos_weight, name=name, **kwargs)
        self.distill_weight = float(distill_weight)

    def call(self, y_true, y_pred):
        num_classes = ops.shape(y_pred)[-1]
        labels = super().call(y_true[:, :num_classes + 1], y_pred)
        return labels + self.distill_weight * distillation_loss(y_true, y_pred, True)

    def get_config(self):
        return {**super().get_config(), "distill_weight": self.distill_weight}


@keras.saving.register_keras_serializable("cfimage")
class DistilledCrossEntropy(MaskedCrossEntropy):
    """MaskedCrossEntropy on the labelled items + distill_weight × the distillation loss."""

    def __init__(self, distill_weight=1.0, name="distilled_cross_entropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.distill_weight = float(distill_weight)

    def call(self, y_true, y_pred):
        num_classes = ops.shape(y_pred)[-1]
        labels = super().call(y_true[:, :num_classes + 1], y_pred)
        return labels + self.distill_weight * distillation_loss(y_true, y_pred, False)

    def get_config(self):
        return {"distill_weight": self.distill_weight, "name": self.name}


def with_distillation(label_loss, distill_weight):
    """The distill arms' label loss: `label_loss` (MaskedWeightedBCE or MaskedCrossEntropy)
    with the distillation term added."""
    if isinstance(label_loss, MaskedWeightedBCE):
        return DistilledBCE(label_loss.pos_weight, distill_weight)
    if isinstance(label_loss, MaskedCrossEntropy):
        return DistilledCrossEntropy(distill_weight)
    raise ValueError(f"no distilled version of the label loss {label_loss!r}")


@keras.saving.register_keras_serializable("cfimage")
class Distillation(keras.metrics.Metric):
    """The distillation loss alone, weighted over the epoch's items (logged as labels_distill)."""

    def __init__(self, multi_label=True, name="distill", **kwargs):
        super().__init__(name=name, **kwargs)
        self.multi_label = bool(multi_label)
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.cast(y_true, "float32")
        num_classes = ops.shape(y_pred)[-1]
        soft, weight = y_true[:, num_classes + 1:2 * num_classes + 1], y_true[:, -1]
        per_item = distillation_per_item(soft, y_pred, self.multi_label)
        self.total.assign_add(ops.sum(per_item * weight))
        self.count.assign_add(ops.sum(weight))

    def result(self):
        return self.total / ops.maximum(self.count, EPSILON)

    def reset_state(self):
        self.total.assign(0.0)
        self.count.assign(0.0)

    def get_config(self):
        return {"multi_label": self.multi_label, "name": self.name}


def cf_item_error(y_true, y_pred):
    """Per-item (mse, l1) between predicted and target CF vectors, and the weights."""
    y_true = ops.cast(y_true, "float32")
    target, weight = y_true[:, :-1], y_true[:, -1]
    difference = ops.cast(y_pred, "float32") - target
    return ops.mean(difference ** 2, axis=1), ops.mean(ops.abs(difference), axis=1), weight


@keras.saving.register_keras_serializable("cfimage")
class CFReconstructionLoss(keras.losses.Loss):
    """docs/method.md's CF loss: Σ w_i (exp(ℓ_i) − 1) / Σ w_i, ℓ_i = MSE_i + L1_i.

    exp() explodes when predictions start far from the targets (docs/method.md,
    "Weak spots"), so above ℓ = `linear_above` it continues as its tangent
    line: the value and gradient are exact below the threshold, finite above.
    """

    def __init__(self, linear_above=6.0, name="cf_reconstruction", **kwargs):
        super().__init__(name=name, reduction="sum_over_batch_size", **kwargs)
        self.linear_above = float(linear_above)

    def call(self, y_true, y_pred):
        mse, l1, weight = cf_item_error(y_true, y_pred)
        ell = mse + l1
        t = self.linear_above
        exp_part = ops.exp(ops.minimum(ell, t)) - 1.0
        linear_part = ops.exp(t) * ops.maximum(ell - t, 0.0)
        per_item = exp_part + linear_part
        return ops.sum(per_item * weight) / ops.maximum(ops.sum(weight), EPSILON)

    def get_config(self):
        return {"linear_above": self.linear_above, "name": self.name}


@keras.saving.register_keras_serializable("cfimage")
class CFError(keras.metrics.Metric):
    """Weighted mean over items with a CF vector of their MSE or L1 error (to log both terms)."""

    def __init__(self, kind="mse", name=None, **kwargs):
        super().__init__(name=name or f"cf_{kind}", **kwargs)
        if kind not in ("mse", "l1"):
            raise ValueError(f"kind must be 'mse' or 'l1', got {kind!r}")
        self.kind = kind
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        mse, l1, weight = cf_item_error(y_true, y_pred)
        values = mse if self.kind == "mse" else l1
        self.total.assign_add(ops.sum(values * weight))
        self.count.assign_add(ops.sum(weight))

    def result(self):
        return self.total / ops.maximum(self.count, EPSILON)

    def reset_state(self):
        self.total.assign(0.0)
        self.count.assign(0.0)

    def get_config(self):
        return {"kind": self.kind, "name": self.name}


@keras.saving.register_keras_serializable("cfimage")
class CFTripletLoss(keras.losses.Loss):
    """The paper's "contrastive" baseline: a triplet loss on the CF head.

    y_true = [positive (d), weight (1)], where the positive is the CF target of
    the item's nearest CF neighbour (data.nearest_cf_neighbours). The anchor is
    the predicted vector; the negative is the positive of the next item in the
    batch. Distances are mean squared differences; the loss per item is
    max(0, d(anchor, positive) − d(anchor, negative) + margin), averaged over
    items whose positive and negative both exist (weight > 0).
    """

    def __init__(self, margin=0.25, name="cf_triplet", **kwargs):
        super().__init__(name=name, reduction="sum_over_batch_size", **kwargs)
        self.margin = float(margin)

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, "float32")
        positive, weight = y_true[:, :-1], y_true[:, -1]
        negative = ops.roll(positive, 1, axis=0)
        anchor = ops.cast(y_pred, "float32")
        d_positive = ops.mean((anchor - positive) ** 2, axis=1)
        d_negative = ops.mean((anchor - negative) ** 2, axis=1)
        per_item = ops.relu(d_positive - d_negative + self.margin)
        both = weight * ops.roll(weight, 1, axis=0)
        return ops.sum(per_item * both) / ops.maximum(ops.sum(both), EPSILON)

    def get_config(self):
        return {"margin": self.margin, "name": self.name}


# --- The CF-loss options (--cf_loss; docs/method.md, "CF target and loss options"). Each reads
# y_true = [target (d), weight (1)] like CFReconstructionLoss: a weight of 0 masks the item.

CF_LOSSES = ("paper", "mse", "cosine", "infonce", "score")


def _weighted_mean(per_item, weight):
    return ops.sum(per_item * weight) / ops.maximum(ops.sum(weight), EPSILON)


def _unit(x):
    return x / ops.maximum(ops.sqrt(ops.sum(x * x, axis=1, keepdims=True)), EPSILON)


@keras.saving.register_keras_serializable("cfimage")
class CFMeanSquaredLoss(keras.losses.Loss):
    """Σ w_i MSE_i / Σ w_i: the squared error alone, without the paper's exp() and L1."""

    def __init__(self, name="cf_mse", **kwargs):
        super().__init__(name=name, reduction="sum_over_batch_size", **kwargs)

    def call(self, y_true, y_pred):
        mse, _, weight = cf_item_error(y_true, y_pred)
        return _weighted_mean(mse, weight)


@keras.saving.register_keras_serializable("cfimage")
class CFCosineLoss(keras.losses.Loss):
    """Σ w_i (1 − cos(prediction_i, target_i)) / Σ w_i: direction only, not length."""

    def __init__(self, name="cf_cosine", **kwargs):
        super().__init__(name=name, reduction="sum_over_batch_size", **kwargs)

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, "float32")
        target, weight = y_true[:, :-1], y_true[:, -1]
        cosine = ops.sum(_unit(ops.cast(y_pred, "float32")) * _unit(target), axis=1)
        return _weighted_mean(1.0 - cosine, weight)


@keras.saving.register_keras_serializable("cfimage")
class CFInfoNCELoss(keras.losses.Loss):
    """In-batch InfoNCE between the CF head's output (a projection of the image embedding)
    and the items' CF vectors: logits_ij = cos(prediction_i, target_j) / temperature, and
    item i's loss is the cross-entropy of picking its own target j = i among the batch's
    targets. Items without a vector (weight 0) are neither anchors nor candidates; the anchors'
    losses are averaged with their weights."""

    def __init__(self, temperature=0.1, name="cf_infonce", **kwargs):
        super().__init__(name=name, reduction="sum_over_batch_size", **kwargs)
        self.temperature = float(temperature)

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, "float32")
        target, weight = y_true[:, :-1], y_true[:, -1]
        logits = ops.matmul(_unit(ops.cast(y_pred, "float32")),
                            ops.transpose(_unit(target))) / self.temperature
        candidate = ops.cast(weight > 0, "float32")[None, :]
        logits = logits * candidate - 1e9 * (1.0 - candidate)  # masked items: no candidates
        per_item = -ops.diagonal(ops.log_softmax(logits, axis=1))
        return _weighted_mean(per_item, weight)

    def get_config(self):
        return {"temperature": self.temperature, "name": self.name}


@keras.saving.register_keras_serializable("cfimage")
class CFScoreLoss(keras.losses.Loss):
    """DropoutNet-style score matching: the predicted vector p should score users as the true
    vector t does. Per item: E_u[(u·p − u·t)²] / E_u[‖u‖²] over the users u of stage 1's user
    table (in target space, cf_targets.users_in_target_space), i.e. (p − t)ᵀ S (p − t) / tr S
    with S = E_u[u uᵀ] (`user_moment`, d x d): the expectation of sampling users for every
    item, without the sampling noise. With S ∝ I it is the squared error summed over
    dimensions / d = the MSE. Weighted mean over the items with a vector."""

    def __init__(self, user_moment, name="cf_score", **kwargs):
        super().__init__(name=name, reduction="sum_over_batch_size", **kwargs)
        moment = np.asarray(user_moment, np.float64)
        self.user_moment = (moment / max(np.trace(moment), EPSILON)).tolist()

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, "float32")
        target, weight = y_true[:, :-1], y_true[:, -1]
        difference = ops.cast(y_pred, "float32") - target
        moment = ops.convert_to_tensor(self.user_moment, "float32")
        per_item = ops.sum(ops.matmul(difference, moment) * difference, axis=1)
        return _weighted_mean(per_item, weight)

    def get_config(self):
        return {"user_moment": self.user_moment, "name": self.name}


def user_moment(user_vectors):
    """S = E_u[u uᵀ] of a user table (n, d) for CFScoreLoss."""
    users = np.asarray(user_vectors, np.float64)
    return users.T @ users / max(len(users), 1)


def make_cf_loss(kind, temperature=0.1, user_moment=None):
    """The keras loss of --cf_loss=`kind` (a name in CF_LOSSES); score needs `user_moment`."""
    if kind == "paper":
        return CFReconstructionLoss()
    if kind == "mse":
        return CFMeanSquaredLoss()
    if kind == "cosine":
        return CFCosineLoss()
    if kind == "infonce":
        return CFInfoNCELoss(temperature)
    if kind == "score":
        if user_moment is None:
            raise ValueError("the score loss needs the users' second-moment matrix")
        return CFScoreLoss(user_moment)
    raise ValueError(f"unknown CF loss {kind!r}; choose one of {', '.join(CF_LOSSES)}")
