"""The losses importance scores are the gradients of (``score.objective``), shared by every family.

Each builder returns ``loss(outputs, labels) -> scalar`` for the dense model's outputs on one batch:

- ``labels``: cross-entropy to the data's labels (folded modulo the class count, so a data set with more
  classes than the model can still be used).
- ``pseudo_labels``: cross-entropy to the dense model's own argmax predictions on the same batch (taken
  from the outputs before the backward pass, so no labels are needed). Unlike a distillation loss to the
  model's own soft outputs, whose gradient is zero at the dense point, the hard-label loss has a non-zero
  gradient wherever the prediction is not fully confident.
- ``features``: for headless backbones (or any model, with its logits as features). The natural label-free
  loss, MSE to the dense model's own output, is zero with a zero gradient at the dense point: every Taylor
  or Fisher score would be 0. Instead the loss is the negative log-likelihood of a Gaussian centred on
  the outputs, at targets *sampled* from that Gaussian: ``target = out.detach() + ε``, ε ~ N(0, I),
  ``loss = ½‖out − target‖² / batch``. Its gradient −ε·∂out/∂w is a Monte-Carlo sample of the score
  function, whose squared expectation is the Fisher information of the Gaussian model of the features (the
  same construction as the true Fisher of a classifier, with sampled labels); summed over batches the
  squared terms (``criterion=fisher``) estimate it, the absolute terms (``taylor``) its square root up to a
  constant. The noise scale only multiplies every score by the same constant (gradient ∝ 1/σ), so σ = 1:
  the ranking does not depend on it. The samples come from a generator seeded by ``score.seed``, so
  scores are reproducible.
- ``distill``: label-free, the loss change a pruned model's outputs would show against the dense model's,
  KL(dense ‖ pruned). That KL has a zero gradient at the dense point, but its Hessian there is the Fisher
  information of the model's predictive distribution, F = E_{x, y ~ p(·|x)}[g gᵀ] with g = ∇ log p(y|x).
  The loss is therefore the cross-entropy to labels *sampled* from the dense model's own softmax (one per
  image, seeded by ``score.seed``): with ``criterion=fisher`` the squared group term (Σ w·∂L/∂w)² of a
  batch estimates δᵀFδ for δ = −w (the unit removed), i.e. twice the second-order KL(dense ‖ pruned) of
  removing that unit alone — within-unit correlations included, no diagonal approximation; ``taylor``
  takes its square root's noisy estimate. Unlike ``pseudo_labels`` (the argmax), it weighs every class the
  model considers plausible, so it keeps what the network's full output distribution depends on.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from mdp_cli.errors import MdpError

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
OBJECTIVES = ("labels", "pseudo_labels", "distill", "features")


def labels_loss() -> Loss:
    def loss(out: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out, labels.to(out.device) % out.shape[1])

    return loss


def pseudo_labels_loss() -> Loss:
    def loss(out: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out, out.detach().argmax(dim=1))

    return loss


def features_loss(seed: int = 0) -> Loss:
    generator = torch.Generator().manual_seed(int(seed))

    def loss(out: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(out.shape, generator=generator, dtype=torch.float32).to(out.device, out.dtype)
        target = out.detach() + noise
        return 0.5 * (out - target).pow(2).sum() / out.shape[0]

    return loss


def distill_loss(seed: int = 0) -> Loss:
    generator = torch.Generator().manual_seed(int(seed))

    def loss(out: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(out.detach().float(), dim=1).cpu()
        sampled = torch.multinomial(probs, 1, generator=generator).squeeze(1).to(out.device)
        return F.cross_entropy(out, sampled)

    return loss


def make_loss(objective: str, seed: int = 0, has_classifier: bool = True, where: str = "score.objective") -> Loss:
    """The loss of ``objective``; a classification objective on a model without a classifier is refused."""
    if objective not in OBJECTIVES:
        raise MdpError(f"{where}={objective!r}: unknown objective (known: {', '.join(OBJECTIVES)})")
    if objective != "features" and not has_classifier:
        raise MdpError(f"{where}={objective}: the model has no classifier (num_classes=0, features out); "
                       "score it with --objective features (score.objective: features)")
    if objective == "labels":
        return labels_loss()
    if objective == "pseudo_labels":
        return pseudo_labels_loss()
    if objective == "distill":
        return distill_loss(seed)
    return features_loss(seed)
