"""The one training loop every training stage uses (tlm-adapt, perk-metatrain, inplace-ttt, distill),
and their shared option fields (ttx.train.options). The loop (torch) loads on first use, so the
option schemas import this package and `ttx --help` stays light."""

__all__ = ["TrainConfig", "TrainResult", "Trainer", "lr_factor", "make_accelerator"]


def __getattr__(name: str):
    if name in __all__:
        from ttx.train import loop

        return getattr(loop, name)
    raise AttributeError(f"module 'ttx.train' has no attribute {name!r}")
