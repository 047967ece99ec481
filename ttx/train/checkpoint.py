"""Training checkpoints with safetensors only: trainable weights, optimizer state, RNG, counters.

A checkpoint is a folder `checkpoints/step-000120/` holding
  trainable.safetensors   the parameters being trained, by name
  optimizer.safetensors   the optimizer's tensors ("state.<param index>.<key>")
  state.json              counters, optimizer hyper-parameters, scheduler state, stage extras
It is written to a temporary folder and renamed into place, so a crash never leaves half of one.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ttx.errors import TtxError
from ttx.io import plain_modes


def checkpoint_dirs(root: Path) -> list[Path]:
    """Complete checkpoints under root, oldest first."""
    folder = Path(root) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith("step-")
             and (p / "state.json").exists()]
    return sorted(found, key=lambda p: int(p.name.split("-", 1)[1]))


def save_checkpoint(root: Path, step: int, *, params: dict[str, torch.Tensor],
                    optimizer: torch.optim.Optimizer, state: dict, keep: int) -> Path:
    folder = Path(root) / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step-{step:07d}"
    tmp = folder / f".tmp-step-{step:07d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        save_file({k: v.detach().contiguous().cpu() for k, v in params.items()},
                  str(tmp / "trainable.safetensors"))
        tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state()
        save_file(rng, str(tmp / "rng.safetensors"))
        (tmp / "state.json").write_text(json.dumps({**state, "optimizer": opt_meta}, indent=1))
        plain_modes(tmp)
    except (OSError, SafetensorError) as exc:   # a full disk: the older checkpoints stay
        shutil.rmtree(tmp, ignore_errors=True)
        raise TtxError(f"cannot write a checkpoint ({_reason(exc)}); the newest complete one "
                       "stays, so --resume continues from it once there is room",
                       path=str(final)) from None
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in checkpoint_dirs(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(folder: Path, *, params: dict[str, torch.nn.Parameter],
                    optimizer: torch.optim.Optimizer) -> dict:
    """Restore weights, optimizer and RNG in place; returns state.json (counters, extras)."""
    state = json.loads((folder / "state.json").read_text())
    saved = load_file(str(folder / "trainable.safetensors"))
    if set(saved) != set(params):
        missing, extra = sorted(set(params) - set(saved)), sorted(set(saved) - set(params))
        raise TtxError(f"checkpoint does not match the model being trained (missing "
                       f"{missing[:3]}, unexpected {extra[:3]})", path=str(folder))
    for name, p in params.items():
        if tuple(saved[name].shape) != tuple(p.shape):
            raise TtxError(f"checkpoint does not match the model being trained ({name} is "
                           f"{list(saved[name].shape)} there, {list(p.shape)} here: another "
                           "LoRA rank or model?)", path=str(folder))
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(saved[name].to(p.device, p.dtype))
    optimizer.load_state_dict(_unflatten_optimizer(load_file(str(folder / "optimizer.safetensors")),
                                                   state["optimizer"]))
    rng = load_file(str(folder / "rng.safetensors"))
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    return state


def _reason(exc: Exception) -> str:
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


def _flatten_optimizer(sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for idx, slots in sd["state"].items():
        for key, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"state.{idx}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    for name, value in meta["scalars"].items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}
