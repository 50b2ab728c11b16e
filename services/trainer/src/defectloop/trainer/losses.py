"""CenterNet losses: penalty-reduced focal loss on the heatmap, L1 on size/offset at centres."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F  # noqa: N812 - the conventional alias


def focal_loss(logits: Tensor, target: Tensor, alpha: float = 2.0, beta: float = 4.0) -> Tensor:
    """CenterNet's variant of focal loss, normalised by the number of object centres.

    ``target`` is a Gaussian-splatted heatmap in [0, 1] with exact 1s at centres. Negatives near a
    centre are down-weighted by ``(1 - target)^beta`` so that a near-miss costs little.
    """
    # logsigmoid is stable where log(sigmoid(x)) underflows for very negative logits.
    log_p = F.logsigmoid(logits)
    log_not_p = F.logsigmoid(-logits)
    p = torch.sigmoid(logits)
    pos = target.eq(1.0).to(logits.dtype)
    neg = 1.0 - pos
    pos_loss = -log_p * (1 - p).pow(alpha) * pos
    neg_loss = -log_not_p * p.pow(alpha) * (1 - target).pow(beta) * neg
    num_pos = pos.sum().clamp(min=1.0)
    return (pos_loss.sum() + neg_loss.sum()) / num_pos


def masked_l1(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean L1 over the cells where ``mask`` is 1 (``pred``/``target`` [N,2,h,w], mask [N,1,h,w])."""
    m = mask.expand_as(pred)
    return (F.l1_loss(pred * m, target * m, reduction="sum")) / m.sum().clamp(min=1.0)


def size_l1(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """L1 on log sizes: a 2-pixel error matters on a 6-pixel spot, not on a 150-pixel scratch."""
    safe_t = torch.where(mask.expand_as(target) > 0, target, torch.ones_like(target))
    return masked_l1(torch.log(pred), torch.log(safe_t), mask)
