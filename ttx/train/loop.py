"""The one training loop: tlm-adapt, perk-metatrain, inplace-ttt and distill-to-mamba all use it.

It owns what every stage would otherwise copy: the accelerate Accelerator, AdamW with decay on
matrices only, the warmup + cosine/linear/constant schedule, gradient accumulation, clipping,
checkpoints every N steps with exact resume (weights, optimizer, schedule, RNG, data position),
a per-step log, and a progress bar. A stage supplies the module, the micro-batches and a
`loss_fn(module, batch)`; it saves its own final artefact (PEFT adapter, HF checkpoint).

A step is one accumulation window of `grad_accum` micro-batches. A micro-batch whose loss_fn
returns None is skipped (no backward); a window with no backward makes no optimizer update but
still advances the schedule, so the learning rate follows the data position.

Several processes (accelerate launch, torchrun; docs/training.md): a step is one window of
processes x grad_accum micro-batches of one seeded order, each rank taking every world-th; the
Trainer averages the gradients over the ranks at the step's end and logs the loss over all of
them; rank 0 writes the log and the checkpoints. `report_to` mirrors the log to a tracker.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ttx.options import resume_may_change
from ttx.seeds import call_seed
from ttx.train.checkpoint import checkpoint_dirs, load_checkpoint, save_checkpoint

LossOut = Any   # tensor | None | (tensor | None, dict of floats)


def _may_change(default=None):
    """A TrainConfig field a resume may change (it does not decide the weights)."""
    return field(default=default, metadata={"resume_may_change": True})


@dataclass
class TrainConfig:
    output_dir: Path = field(metadata={"resume_may_change": True})
    lr: float = 5e-5
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: str = "cosine"             # cosine | linear | constant (after warmup)
    warmup_ratio: float = 0.0
    max_steps: int | None = None         # optimizer steps; None: epochs over the batches
    epochs: int = 1
    grad_accum: int = 1
    max_grad_norm: float | None = 1.0
    save_every: int = _may_change(0)     # checkpoint every N steps (0: only when stopping early)
    keep_checkpoints: int = _may_change(2)
    seed: int = 0
    shuffle: bool = False                # reshuffle micro-batches each epoch (seeded)
    mixed_precision: str = "no"          # no | fp16 | bf16 (accelerate)
    resume: bool = _may_change(False)
    stop_after: int | None = _may_change(None)   # stop after N steps in this invocation (checkpointed)
    desc: str = _may_change("train")
    progress: bool = _may_change(True)
    report_to: str = _may_change("none")  # none | tensorboard | wandb: accelerate's trackers
    # what else decides the training (the stage's input hashes, model, LoRA shape...): a resume
    # with other values is refused, naming the option
    fingerprint: dict = field(default_factory=dict)


@dataclass
class TrainResult:
    steps: int = 0                       # steps (windows) completed in total
    updates: int = 0                     # optimizer updates made (steps with a backward)
    backward: int = 0                    # micro-batches with a backward pass
    skipped: int = 0                     # micro-batches whose loss_fn returned None
    losses: list[float] = field(default_factory=list)
    resumed_from: int | None = None
    finished: bool = False
    wall_s: float = 0.0


def make_accelerator(mixed_precision: str = "no", report_to: str = "none", project_dir=None):
    """The Accelerator: created here and nowhere else (accelerate keeps its state per process).
    On CPU under torchrun it runs MULTI_CPU on gloo (ttx.train.dist); `report_to` names
    accelerate's tracker (tensorboard, wandb) or none."""
    from accelerate import Accelerator

    from ttx.train.dist import launched, state, use_cpu

    state()                                  # the process state, made the one way
    trackers = None if report_to in (None, "none") else [report_to]
    return Accelerator(mixed_precision=mixed_precision, cpu=use_cpu() and launched(),
                       log_with=trackers, project_dir=str(project_dir) if project_dir else None)


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Linear warmup to 1, then cosine / linear decay to 0, or constant."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class Trainer:
    def __init__(self, module: torch.nn.Module, config: TrainConfig, total_steps: int | None = None):
        if config.schedule not in ("cosine", "linear", "constant"):
            raise ValueError(f"unknown schedule {config.schedule!r}")
        self.config = config
        self.output_dir = Path(config.output_dir)
        torch.manual_seed(config.seed)
        self.accelerator = make_accelerator(config.mixed_precision, config.report_to,
                                            self.output_dir / "runs")
        self.named = {n: p for n, p in module.named_parameters() if p.requires_grad}
        if not self.named:
            raise ValueError("nothing to train: no parameter requires grad")
        decay = [p for p in self.named.values() if p.ndim >= 2]
        no_decay = [p for p in self.named.values() if p.ndim < 2]
        groups = [{"params": decay, "weight_decay": config.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr,
                                      betas=config.betas)
        if self.accelerator.num_processes > 1:
            # several processes: no DDP wrapper. The Trainer averages the gradients itself at the
            # step's end (_finish_window), so a rank may skip a forward (a micro-batch whose
            # loss_fn returns None) or call the bare module (perk's functional inner loop); DDP's
            # per-forward bookkeeping assumes every rank runs the same forwards. Rank 0's
            # weights are broadcast once so every rank starts from them.
            from accelerate.utils import broadcast

            if any(p.device != self.accelerator.device for p in self.named.values()):
                module = module.to(self.accelerator.device)
            with torch.no_grad():
                for p in self.named.values():
                    p.copy_(broadcast(p.detach().clone(), from_process=0))
            self.module, self.optimizer = module, self.accelerator.prepare(optimizer)
        else:
            self.module, self.optimizer = self.accelerator.prepare(module, optimizer)
        self.total_steps = total_steps or config.max_steps
        self.step_count = 0                  # completed windows
        self.micro = 0                       # micro-batches in the current window
        self.result = TrainResult()
        self._window_losses: list[float] = []
        self._window_backward = 0
        self._extras: dict[str, float] = {}
        self._log_path = self.output_dir / "train_log.jsonl"
        self._tracking = config.report_to not in (None, "none")
        self._trackers_on = False
        # several processes: the Trainer averages the gradients itself at the step's end (one
        # all-reduce), so a stage whose loss calls the bare module or skips a micro-batch (a
        # zero gradient) still contributes, and no rank waits on another
        self._sync_by_hand = self.accelerator.num_processes > 1

    # -- what stages use -------------------------------------------------------------------
    @property
    def unwrapped(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.module)

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def lr(self) -> float:
        total = self.total_steps or 0
        warmup = round(self.config.warmup_ratio * total)
        return self.config.lr * lr_factor(self.step_count, total, warmup, self.config.schedule)

    def resume(self) -> dict | None:
        """Load the newest checkpoint if there is one; returns its stage extras (or None)."""
        found = checkpoint_dirs(self.output_dir)
        if not found:
            return None
        self._check_resume(found[-1])
        state = load_checkpoint(found[-1], params=self._trainable(), optimizer=self.optimizer)
        self.step_count = state["step"]
        self.result = TrainResult(**{**state["result"], "resumed_from": state["step"]})
        self._truncate_log(self.step_count)
        return state.get("extras", {})

    def _check_resume(self, folder: Path) -> None:
        """Refuse a resume whose settings differ from the checkpoint's (one line, the option)."""
        import json

        from ttx.errors import TtxError

        state = json.loads((folder / "state.json").read_text())
        saved = state.get("config") or {}
        then, now_world = state.get("processes", 1), self.accelerator.num_processes
        if then != now_world:                # each rank's share of a step would change
            raise TtxError(f"--resume under {now_world} process(es): the checkpoint was trained under "
                           f"{then} (a step is processes x --grad-accum micro-batches); relaunch with "
                           f"--num_processes {then}", path=str(folder))
        now = json.loads(json.dumps(_jsonable(asdict(self.config)), default=str))
        flat_saved = {**{k: v for k, v in saved.items() if k != "fingerprint"},
                      **(saved.get("fingerprint") or {})}
        flat_now = {**{k: v for k, v in now.items() if k != "fingerprint"},
                    **(now.get("fingerprint") or {})}
        for name in sorted(set(flat_saved) | set(flat_now)):
            if name in resume_may_change(TrainConfig):
                continue
            if flat_saved.get(name) != flat_now.get(name):
                raise TtxError(f"--resume with a different {_flag(name)}: the checkpoint was "
                               f"trained with {flat_saved.get(name)!r}, this run has "
                               f"{flat_now.get(name)!r}", path=str(folder))

    def save(self, extras: dict | None = None) -> Path | None:
        """Checkpoint now (at a window boundary); the main process writes."""
        self.accelerator.wait_for_everyone()
        if not self.is_main:
            return None
        return save_checkpoint(self.output_dir, self.step_count, params=self._trainable(),
                               optimizer=self.optimizer, keep=self.config.keep_checkpoints,
                               state={"step": self.step_count, "result": asdict(self.result),
                                      "processes": self.accelerator.num_processes,
                                      "config": _jsonable(asdict(self.config)),
                                      "extras": extras or {}})

    def step(self, batch, loss_fn: Callable[[torch.nn.Module, Any], LossOut],
             weight: float = 1.0) -> float | None:
        """One micro-batch; completes a step (update, schedule, log, checkpoint) at the window end.
        weight scales its gradient (not its logged loss): a stage's uneven windows (rl updates)."""
        self.module.train()
        with self.accelerator.autocast() if self._sync_by_hand else _nullcontext():
            loss, extras = _split(loss_fn(self.module, batch))
        padding = loss is None and self.accelerator.num_processes > 1
        if padding:
            # every rank must join the gradient all-reduce: contribute zeros (not logged)
            loss = sum(p.sum() for p in self.named.values()) * 0.0
        value = None
        if loss is None or padding:
            self.result.skipped += 1
        if padding:
            self.accelerator.backward(loss)
        elif loss is not None:
            self.accelerator.backward(loss * (weight / self.config.grad_accum))
            value = float(loss.detach())
            self._window_losses.append(value)
            self._window_backward += 1
            self.result.backward += 1
        for k, v in extras.items():
            self._extras[k] = float(v)
        self.micro += 1
        if self.micro == self.config.grad_accum:
            self._finish_window()
        return value

    def fit(self, batches: Sequence, loss_fn: Callable[[torch.nn.Module, Any], LossOut]) -> TrainResult:
        """epochs x batches micro-batches (or max_steps steps), resuming when config.resume."""
        from tqdm import tqdm

        cfg = self.config
        batches = list(batches)
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        usable = len(batches) // world * world   # equal counts per rank, so no rank waits forever
        if not usable:
            raise ValueError("no training batches")
        span = world * cfg.grad_accum            # a step's micro-batches over all ranks
        per_epoch = math.ceil(usable / span)
        total = cfg.max_steps or per_epoch * cfg.epochs
        self.total_steps = total
        if cfg.resume:
            self.resume()
        started, t0 = self.step_count, time.perf_counter()
        bar = tqdm(total=total, initial=self.step_count, desc=cfg.desc, unit="step", file=sys.stderr,
                   disable=not (cfg.progress and self.is_main), dynamic_ncols=True)
        while self.step_count < total:
            epoch, in_epoch = divmod(self.step_count, per_epoch)
            # the global order (one seeded permutation of all batches, as one process takes
            # them); each rank takes every world-th of the step's window
            order = self._order(len(batches), epoch)[:usable]
            window = order[in_epoch * span:(in_epoch + 1) * span][rank::world]
            for i in window:
                self.step(batches[i], loss_fn)
            self.flush()                     # a short last window of the epoch
            bar.update(1)
            if self.result.losses:
                bar.set_postfix(loss=f"{self.result.losses[-1]:.4f}", lr=f"{self.lr():.2e}")
            if cfg.stop_after is not None and self.step_count - started >= cfg.stop_after \
                    and self.step_count < total:
                self.save()
                break
        bar.close()
        self.result.finished = self.step_count >= total
        self.result.wall_s += time.perf_counter() - t0
        self.end_tracking()
        return self.result

    def order_run(self, n: int, steps: int) -> list[int]:
        """The micro-batches (indices into fit's list, all processes) that fit's first `steps`
        steps take, in order: what a stage capped by max_steps really trained on."""
        world = self.accelerator.num_processes
        span, usable = world * self.config.grad_accum, n // world * world
        per_epoch = math.ceil(usable / span)
        out: list[int] = []
        for epoch in range(math.ceil(steps / per_epoch) if usable else 0):
            order = self._order(n, epoch)[:usable]
            windows = min(per_epoch, steps - epoch * per_epoch)
            out += order[:windows * span]
        return out

    def flush(self) -> None:
        """Finish a partly filled window now (the end of an epoch or of an online block)."""
        if self.micro:
            self._finish_window()

    def end_tracking(self) -> None:
        """Close the trackers (--report-to); a later step reopens them. Not end_training():
        that also destroys the process group, which the stage may still need."""
        if self._tracking and self._trackers_on:
            for tracker in self.accelerator.trackers:
                tracker.finish()
            self.accelerator.trackers = []
            self._trackers_on = False

    def remove_checkpoints(self) -> None:
        """After the stage saved its final artefact: checkpoints are no longer needed."""
        import shutil

        if self.is_main:
            shutil.rmtree(self.output_dir / "checkpoints", ignore_errors=True)

    # -- internals ---------------------------------------------------------------------------
    def _trainable(self) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in self.unwrapped.named_parameters() if p.requires_grad}

    def _finish_window(self) -> None:
        cfg = self.config
        lr = self.lr()
        total, count, backward = sum(self._window_losses), len(self._window_losses), self._window_backward
        if self.accelerator.num_processes > 1:
            # the window over all ranks: the mean loss of every rank's micro-batches (what one
            # process with the same global batch logs), and an update if any rank did a backward
            summed = self.accelerator.reduce(torch.tensor([total, count, backward], dtype=torch.float64,
                                                          device=self.accelerator.device), "sum")
            total, count, backward = summed.tolist()
        updated = backward > 0
        grad_norm = None
        if updated:
            if self._sync_by_hand:           # what DDP's all-reduce does: the mean over ranks
                params = list(self.named.values())
                flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                                  for p in params])
                flat = self.accelerator.reduce(flat, "mean")
                for p, g in zip(params, flat.split([p.numel() for p in params])):
                    p.grad = g.view_as(p).to(p.dtype)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            if cfg.max_grad_norm:
                grad_norm = float(self.accelerator.clip_grad_norm_(list(self.named.values()),
                                                                   cfg.max_grad_norm))
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.result.updates += 1
        loss = total / count if count else None
        if loss is not None:
            self.result.losses.append(loss)
        self.step_count += 1
        self.result.steps = self.step_count
        self._log({"step": self.step_count, "loss": loss, "lr": lr, "updated": updated,
                   "grad_norm": grad_norm, **self._extras})
        self.micro, self._window_losses, self._window_backward, self._extras = 0, [], 0, {}
        if cfg.save_every and self.step_count % cfg.save_every == 0:
            self.save()

    def _order(self, n: int, epoch: int) -> list[int]:
        if not self.config.shuffle:
            return list(range(n))
        g = torch.Generator().manual_seed(call_seed(self.config.seed, epoch))
        return torch.randperm(n, generator=g).tolist()

    def _log(self, row: dict) -> None:
        if not self.is_main:
            return
        import json

        from ttx.io import append_line

        self.output_dir.mkdir(parents=True, exist_ok=True)
        if self._tracking:
            self._track(row)
        fd = os.open(self._log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
        try:                              # a full disk: one line, the log keeps whole rows
            append_line(fd, json.dumps(row) + "\n", self._log_path, sync=False)
        finally:
            os.close(fd)

    def _track(self, row: dict) -> None:
        """Mirror a train_log row to the --report-to tracker (numbers only, at the row's step)."""
        if not self._trackers_on:
            cfg = {k: (v if isinstance(v, (int, float, str, bool)) else str(v))
                   for k, v in _jsonable(asdict(self.config)).items() if k != "fingerprint"}
            name = "".join(c if c.isalnum() or c in "-_" else "-" for c in self.config.desc)
            self.accelerator.init_trackers(name, config=cfg,
                                           init_kwargs={"wandb": {"dir": str(self.output_dir)}})
            self._trackers_on = True
        values = {k: float(v) for k, v in row.items() if k != "step"
                  and isinstance(v, (int, float)) and v is not None and math.isfinite(float(v))}
        self.accelerator.log(values, step=int(row["step"]))

    def _truncate_log(self, step: int) -> None:
        from ttx.io import resume_log

        if self.is_main:                     # rows past the checkpoint resumed from go
            resume_log(self._log_path, keep=lambda r: isinstance(r.get("step"), int)
                       and r["step"] <= step)


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _split(out: LossOut) -> tuple[torch.Tensor | None, dict]:
    if isinstance(out, tuple):
        return out[0], dict(out[1] or {})
    return out, {}


def _flag(name: str) -> str:
    return name if name.startswith(("-", "input", "model")) else "--" + name.replace("_", "-")


def _jsonable(d: dict) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}
