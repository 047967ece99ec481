"""The one training loop every training stage uses (tlm-adapt, perk-metatrain, inplace-ttt, distill)."""

from ttx.train.loop import TrainConfig, Trainer, TrainResult, lr_factor, make_accelerator

__all__ = ["TrainConfig", "TrainResult", "Trainer", "lr_factor", "make_accelerator"]
