"""The ProRL trainer: TRL's GRPOTrainer with dynamic sampling, hard resets of the reference policy and optimizer,
training stages, the no-EOS penalty and the environment reward."""

from prorl.trainer.callbacks import ResetCallback, ResetEvent
from prorl.trainer.config import ProRLConfig
from prorl.trainer.rewards import EnvReward
from prorl.trainer.trainer import ProRLTrainer

__all__ = ["EnvReward", "ProRLConfig", "ProRLTrainer", "ResetCallback", "ResetEvent"]
