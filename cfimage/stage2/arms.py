"""The arms of the paper's comparison, defined once (docs/method.md, "Baselines").

An arm fixes what stage 2 optimises:
  * the CF loss on the "cf" head: the reconstruction loss of docs/method.md, or a triplet
    loss whose positive is the item's nearest CF neighbour (the "contrastive" baseline);
  * λ, the weight of that loss next to the label loss (weight 1): 0, or --cf_weight;
  * whether a pre-training phase regresses the CF targets alone first;
  * the confidence weighting of the CF loss per item (or None: --cf_confidence decides);
  * whether the model also takes the item's own CF vector as an input (the "hybrid" arms:
    cfimage/stage2/hybrid.py), trained with --cf_input_dropout so that it still classifies an
    image without a vector;
  * whether the label head also learns the soft labels of a CF → labels teacher on every
    training item with a CF vector, weighted by --distill_weight (the "distill" arms:
    cfimage/stage2/distill.py).

`cfimage.train --arm=NAME` trains one arm, `fit.compile_model` picks the CF loss from it,
and `cfimage.experiment --arms=...` runs a grid of them. Plain data: no TensorFlow import.
"""

import dataclasses

RECONSTRUCTION = "reconstruction"
TRIPLET = "triplet"


@dataclasses.dataclass(frozen=True)
class Arm:
    name: str
    summary: str
    cf_loss: str  # RECONSTRUCTION or TRIPLET
    lambda_from_flag: bool  # λ = --cf_weight; otherwise λ = 0 in the (main) training phase
    pretrain: bool = False  # first --pretrain_epochs on the CF targets only (λ_labels = 0)
    confidence: str | None = None  # fixed CF-loss weighting, or None: --cf_confidence
    # The one λ of the experiment grid for an arm that has no λ of its own (what the report
    # shows); None: the grid's --cf_weights.
    grid_lambda: float | None = None
    # The CF vector is also an input of the label head (with CF-input dropout): hybrid.py.
    cf_input: bool = False
    # The label loss adds --distill_weight × the distillation loss (teacher's soft labels).
    distill: bool = False

    def cf_weight(self, flag_value):
        """λ of the (main) training phase, given --cf_weight."""
        return float(flag_value) if self.lambda_from_flag else 0.0

    def distill_weight(self, flag_value):
        """The weight of the distillation loss, given --distill_weight (0 without one)."""
        return float(flag_value) if self.distill else 0.0

    def confidence_weighting(self, flag_value):
        """The CF-loss weighting this arm trains with, given --cf_confidence."""
        return self.confidence or flag_value

    def grid_lambdas(self, cf_weights):
        """The λ values of this arm in an experiment grid over `cf_weights`."""
        return list(cf_weights) if self.grid_lambda is None else [self.grid_lambda]


ARMS = {arm.name: arm for arm in [
    # The baseline every gain is measured against: the CF head is trained with weight 0.
    Arm("image_only", "L_labels only (λ = 0)", RECONSTRUCTION, lambda_from_flag=False,
        confidence="uniform", grid_lambda=0.0),
    Arm("multitask", "L_labels + λ·L_cf, CF weights from --cf_confidence", RECONSTRUCTION,
        lambda_from_flag=True),
    Arm("multitask_sqrt", "L_labels + λ·L_cf, CF weights ∝ √interactions", RECONSTRUCTION,
        lambda_from_flag=True, confidence="sqrt"),
    Arm("multitask_loss", "L_labels + λ·L_cf, loss-based CF weights", RECONSTRUCTION,
        lambda_from_flag=True, confidence="loss"),
    # Pre-training weight: the CF phase's λ is 1 (labels 0); the grid reports it as its λ.
    Arm("two_stage", "CF regression first (--pretrain_epochs), then labels only",
        RECONSTRUCTION, lambda_from_flag=False, pretrain=True, grid_lambda=1.0),
    Arm("contrastive", "L_labels + λ·triplet loss on the CF head (positive = nearest CF "
        "neighbour)", TRIPLET, lambda_from_flag=True),
    # The item's own CF vector as an input next to the image (zeroed, with its indicator, for
    # --cf_input_dropout of the training items each step); CF loss weight 0, like image_only.
    Arm("hybrid", "image + the item's own CF vector as inputs (CF-input dropout), L_labels "
        "only", RECONSTRUCTION, lambda_from_flag=False, confidence="uniform", grid_lambda=0.0,
        cf_input=True),
    # Both uses of the CF signal: the vector as an input and the CF head trained with λ.
    Arm("hybrid+multitask", "hybrid, plus λ·L_cf on the CF head (CF weights from "
        "--cf_confidence)", RECONSTRUCTION, lambda_from_flag=True, cf_input=True),
    # A CF → labels teacher, fit on the labelled training items, gives soft labels to every
    # training item with a CF vector; the label head learns them next to the true labels.
    # CF loss weight 0, like image_only.
    Arm("distill", "L_labels + --distill_weight × the distillation loss to a CF → labels "
        "teacher's soft labels (every training item with a CF vector)", RECONSTRUCTION,
        lambda_from_flag=False, confidence="uniform", grid_lambda=0.0, distill=True),
    Arm("distill+multitask", "distill, plus λ·L_cf on the CF head (CF weights from "
        "--cf_confidence)", RECONSTRUCTION, lambda_from_flag=True, distill=True),
]}
BASELINE = "image_only"  # the arm every gain is measured against


def get(name):
    """The arm called `name` (ValueError naming the known arms otherwise)."""
    if name not in ARMS:
        raise ValueError(f"unknown arm {name!r}; choose one of {', '.join(ARMS)}")
    return ARMS[name]


def describe():
    """One line per arm, for --help."""
    return "; ".join(f"{arm.name}: {arm.summary}" for arm in ARMS.values())
