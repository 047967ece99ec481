"""The shared training loop: schedule, accumulation, skipping, and exact resume."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ttx.train import TrainConfig, Trainer, lr_factor


def _module(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.3), torch.nn.Linear(8, 1))


def _batches(count: int = 12) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(3, 4, generator=g), torch.randn(3, 1, generator=g)) for _ in range(count)]


def _mse(module, batch):
    x, y = batch
    return torch.nn.functional.mse_loss(module(x), y)


def _config(tmp_path, **kw) -> TrainConfig:
    base = dict(output_dir=tmp_path, lr=1e-2, weight_decay=0.1, warmup_ratio=0.2, grad_accum=2,
                shuffle=True, epochs=2, save_every=2, progress=False, seed=3)
    return TrainConfig(**{**base, **kw})


def _weights(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_interrupted_run_resumes_to_the_same_weights(tmp_path):
    whole = Trainer(_module(), _config(tmp_path / "whole"))
    done = whole.fit(_batches(), _mse)
    assert done.finished and done.steps == 12 and done.updates == 12

    first = Trainer(_module(), _config(tmp_path / "cut", stop_after=5))
    part = first.fit(_batches(), _mse)
    assert not part.finished and part.steps == 5
    files = {p.name for p in (tmp_path / "cut" / "checkpoints").glob("*/*")}
    assert files == {"trainable.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json"}

    # a fresh process would rebuild the module from scratch: different init, then resume
    second = Trainer(_module(seed=9), _config(tmp_path / "cut", resume=True))
    rest = second.fit(_batches(), _mse)
    assert rest.finished and rest.resumed_from == 5 and rest.steps == 12
    for name, value in _weights(whole.unwrapped).items():
        torch.testing.assert_close(_weights(second.unwrapped)[name], value, rtol=0, atol=0)
    assert rest.losses == pytest.approx(done.losses)
    log = [json.loads(line) for line in (tmp_path / "cut" / "train_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == list(range(1, 13))


def test_accumulating_two_halves_equals_one_full_batch(tmp_path):
    x, y = torch.randn(8, 4), torch.randn(8, 1)
    halves = [(x[:4], y[:4]), (x[4:], y[4:])]
    kw = dict(shuffle=False, epochs=1, warmup_ratio=0.0, save_every=0, schedule="constant")
    model = lambda: torch.nn.Sequential(torch.nn.Linear(4, 1))
    torch.manual_seed(0)
    a = Trainer(model(), _config(tmp_path / "a", grad_accum=2, **kw))
    a.fit(halves, _mse)
    torch.manual_seed(0)
    b = Trainer(model(), _config(tmp_path / "b", grad_accum=1, **kw))
    b.fit([(x, y)], _mse)
    for name, value in _weights(b.unwrapped).items():
        torch.testing.assert_close(_weights(a.unwrapped)[name], value)


def test_a_skipped_batch_makes_no_update(tmp_path):
    trainer = Trainer(_module(), _config(tmp_path, grad_accum=1, shuffle=False, epochs=1))
    before = _weights(trainer.unwrapped)
    result = trainer.fit(_batches(4), lambda m, b: None)
    assert (result.steps, result.updates, result.backward, result.skipped) == (4, 0, 0, 4)
    for name, value in before.items():
        assert torch.equal(_weights(trainer.unwrapped)[name], value)
    # one real batch among skipped ones: exactly one update
    calls = iter([None, None, "train", None])
    trainer = Trainer(_module(), _config(tmp_path / "one", grad_accum=1, shuffle=False, epochs=1))
    result = trainer.fit(_batches(4), lambda m, b: _mse(m, b) if next(calls) else None)
    assert (result.updates, result.backward, result.skipped) == (1, 1, 3)


def test_schedule_warms_up_then_decays_to_zero():
    assert lr_factor(0, 100, 10, "cosine") == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(10, 100, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, "cosine") == pytest.approx(0.5)
    assert lr_factor(100, 100, 10, "cosine") == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(55, 100, 10, "linear") == pytest.approx(0.5)
    assert lr_factor(99, 100, 10, "constant") == 1.0
    assert all(0 <= lr_factor(s, 50, 5, "cosine") <= 1 for s in range(60))
    assert math.isclose(lr_factor(30, 50, 0, "cosine"), 0.5 * (1 + math.cos(math.pi * 0.6)))


def test_weight_decay_spares_biases(tmp_path):
    trainer = Trainer(_module(), _config(tmp_path, weight_decay=0.5))
    groups = trainer.optimizer.param_groups
    assert [p.ndim for p in groups[0]["params"]] == [2, 2] and groups[0]["weight_decay"] == 0.5
    assert [p.ndim for p in groups[1]["params"]] == [1, 1] and groups[1]["weight_decay"] == 0.0
