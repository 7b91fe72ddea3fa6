"""Training and evaluation plumbing shared by every method: the Trainer used by train_net.py,
evaluator selection, config setup and user-facing errors."""

from .errors import UserError  # noqa: F401
from .evaluators import build_evaluator  # noqa: F401
from .setup import build_cfg, setup_cfg  # noqa: F401
from .trainer import Trainer  # noqa: F401
