"""smoothl1: the Smooth L1 loss and its robust relatives for Keras 3.

    smooth_l1(d; beta) = 0.5 * d**2 / beta   if |d| < beta
                         |d| - 0.5 * beta     otherwise        (beta = 0: |d|)

with ``d = y_pred - y_true``. See :class:`SmoothL1Loss`.
"""

from smoothl1._launch import choose_command_backend

choose_command_backend()  # only acts for the `smoothl1` command; see _launch.py

from smoothl1 import penalties, registry  # noqa: E402
from smoothl1.callbacks import ResidualMonitor  # noqa: E402
from smoothl1.detection import (  # noqa: E402
    BoxRegressionLoss,
    anchor_targets,
    box_iou,
    convert_boxes,
    decode_boxes,
    encode_boxes,
    load_coco,
)
from smoothl1.losses import (  # noqa: E402
    AdaptiveWingLoss,
    BalancedL1Loss,
    CharbonnierLoss,
    GeneralRobustLoss,
    HuberLoss,
    PenaltyLoss,
    SelfAdjustingBetaState,
    SelfAdjustingSmoothL1Loss,
    SmoothL1Loss,
    WingLoss,
    adaptive_wing,
    balanced_l1,
    charbonnier,
    general_robust,
    huber,
    smooth_l1,
    wing,
)
from smoothl1.metrics import LinearFraction, SmoothL1  # noqa: E402
from smoothl1.registry import get, known_losses, spec_of  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "AdaptiveWingLoss",
    "BalancedL1Loss",
    "BoxRegressionLoss",
    "CharbonnierLoss",
    "GeneralRobustLoss",
    "HuberLoss",
    "LinearFraction",
    "PenaltyLoss",
    "ResidualMonitor",
    "SelfAdjustingBetaState",
    "SelfAdjustingSmoothL1Loss",
    "SmoothL1",
    "SmoothL1Loss",
    "WingLoss",
    "adaptive_wing",
    "anchor_targets",
    "balanced_l1",
    "box_iou",
    "charbonnier",
    "convert_boxes",
    "decode_boxes",
    "encode_boxes",
    "general_robust",
    "get",
    "huber",
    "known_losses",
    "load_coco",
    "penalties",
    "registry",
    "smooth_l1",
    "spec_of",
    "wing",
]
