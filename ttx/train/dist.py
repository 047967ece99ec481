"""Which processes this run has: accelerate's process state, made the same way by every stage.

accelerate keeps one state per process, fixed by whoever creates it first. On a machine without
CUDA, `PartialState()` under torchrun (`accelerate launch --multi_gpu`, `torchrun`) sees LOCAL_RANK
but no accelerator backend and falls back to one process per rank, each training alone. Creating
it with `cpu=True` there selects MULTI_CPU with gloo, so the ranks really share the gradients.
Every stage asks here (never `PartialState()` directly), and the Trainer's Accelerator agrees.
"""

from __future__ import annotations

import os


def use_cpu() -> bool:
    """CPU training: asked for (ACCELERATE_USE_CPU, `accelerate launch --cpu`) or no CUDA."""
    import torch
    from accelerate.utils import parse_flag_from_env

    return parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available()


def launched() -> bool:
    """Started by torchrun / accelerate launch (one process among WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def state():
    """accelerate's PartialState for this run (MULTI_CPU on gloo when launched without CUDA)."""
    from accelerate import PartialState

    return PartialState(cpu=use_cpu() and launched())


def writer_lock(output):
    """The output folder's lock (ttx.records.folder_lock: a second writer is refused), held by the
    main process only: the other ranks of a run never write the folder."""
    from contextlib import nullcontext

    from ttx.records import folder_lock

    return folder_lock(output) if state().is_main_process else nullcontext()
