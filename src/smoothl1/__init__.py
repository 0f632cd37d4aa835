"""smoothl1: the Smooth L1 loss and its robust relatives for Keras 3.

    smooth_l1(d; beta) = 0.5 * d**2 / beta   if |d| < beta
                         |d| - 0.5 * beta     otherwise        (beta = 0: |d|)

with ``d = y_pred - y_true``. See :class:`SmoothL1Loss`.
"""

from smoothl1 import penalties
from smoothl1.losses import PenaltyLoss, SmoothL1Loss, smooth_l1
from smoothl1.metrics import SmoothL1

__version__ = "0.1.0"

__all__ = [
    "PenaltyLoss",
    "SmoothL1",
    "SmoothL1Loss",
    "penalties",
    "smooth_l1",
]
