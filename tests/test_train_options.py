"""The training stages' shared options: the same names everywhere (old spellings kept as aliases),
and whether an option may change on --resume is a property of the option."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass

import pytest
import torch

from ttx.cli import cli
from ttx.errors import TtxError
from ttx.inplace_ttt.config import InplaceTTTConfig
from ttx.mamba.config import DistillConfig
from ttx.options import opt, resume_may_change
from ttx.perk.config import EncodeConfig, MetaTrainConfig, PerkConfig
from ttx.records import check_fingerprint, stage_fingerprint
from ttx.rl.config import RLConfig, TTRLConfig
from ttx.sft.config import SFTConfig
from ttx.tlm.config import TLMConfig
from ttx.train import TrainConfig, Trainer
from ttx.verifier.config import VerifierConfig

SHARED = ("--lr", "--epochs", "--steps", "--grad-accum", "--batch-size", "--save-every",
          "--stop-after", "--resume", "--no-resume", "--seed", "--overwrite", "--warmup-ratio",
          "--weight-decay", "--max-grad-norm", "--lora-r", "--lora-alpha", "--lora-dropout",
          "--lora-targets", "--report-to")
# what a stage's trainer cannot honour, so it does not take the option (docs say why)
NOT_TAKEN = {
    "tlm-adapt": {"--weight-decay", "--max-grad-norm"},
    "perk-metatrain": {"--batch-size"},
    "inplace-ttt-convert": {"--lora-r", "--lora-alpha", "--lora-dropout",
                            "--lora-targets"},
    "distill-to-mamba": {"--lora-r", "--lora-alpha", "--lora-dropout",
                         "--lora-targets"},
    "verifier-train": set(),
    "ttrl": {"--grad-accum"},       # its accumulation is --mini-batch-size / --micro-batch-size
    "rl": {"--grad-accum"},         # ttrl's stage
    "sft": set(),
}
OLD_SPELLINGS = {"inplace-ttt-convert": {"--max-steps": "steps"},
                 "perk-metatrain": {"--target-modules": "target_modules"},
                 "ttrl": {"--episodes": "episodes", "--epochs": "episodes"},
                 "rl": {"--episodes": "episodes", "--epochs": "episodes"}}


def _flags(name: str) -> dict[str, str]:
    command = cli.get_command(None, name)
    return {flag: p.name for p in command.params
            for flag in [*getattr(p, "opts", []), *getattr(p, "secondary_opts", [])]}


@pytest.mark.parametrize("stage", sorted(NOT_TAKEN))
def test_every_training_stage_takes_the_shared_names(stage):
    flags = _flags(stage)
    missing = {f for f in SHARED if f not in flags} - NOT_TAKEN[stage]
    assert not missing, f"{stage} lacks {sorted(missing)}"
    assert not NOT_TAKEN[stage] & set(flags), f"{stage} takes {NOT_TAKEN[stage] & set(flags)}: update"
    for old, param in OLD_SPELLINGS.get(stage, {}).items():
        assert flags[old] == param, (stage, old)


def test_old_spellings_parse_to_the_same_option(tmp_path):
    """--max-steps (inplace-ttt-convert's old name) sets the same field as --steps."""
    from click.testing import CliRunner

    seen = {}
    command = cli.get_command(None, "inplace-ttt-convert")
    real = command.callback
    command.callback = lambda **options: seen.update(options)
    try:
        for flag in ("--steps", "--max-steps"):
            result = CliRunner().invoke(cli, ["inplace-ttt-convert", "-o", str(tmp_path), flag, "3"])
            assert result.exit_code == 0, result.output
            assert seen["steps"] == 3
    finally:
        command.callback = real


SCHEMAS = [TLMConfig, MetaTrainConfig, PerkConfig, EncodeConfig, InplaceTTTConfig, DistillConfig,
           VerifierConfig, TTRLConfig, RLConfig, SFTConfig]


def _other(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, tuple):
        return (*value, "x")
    return f"{value}x" if isinstance(value, str) else "x"


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda c: c.__name__)
def test_the_property_decides_what_a_resume_may_change(schema):
    """Changing an option declared resume_may_change keeps the fingerprint; changing any other
    option is refused, naming it."""
    required = {f.name: "x" for f in dataclasses.fields(schema)
                if f.metadata.get("cli", {}).get("required")}
    before = schema(**required)
    may = resume_may_change(schema)
    assert {"resume"} <= may or schema is PerkConfig
    checked = 0
    for f in dataclasses.fields(schema):
        value = getattr(before, f.name)
        if not isinstance(value, (str, int, float, bool, tuple, type(None))):
            continue                                   # nested or a dict: not fingerprinted
        after = dataclasses.replace(before, **{f.name: _other(value)})
        old = stage_fingerprint(asdict(before), volatile=may)
        new = stage_fingerprint(asdict(after), volatile=may)
        if f.name in may:
            check_fingerprint(old, new, path="out", made="made", hint="h")
        else:
            with pytest.raises(TtxError, match="--resume with a different"):
                check_fingerprint(old, new, path="out", made="made", hint="h")
            checked += 1
    assert checked >= 5


def test_a_field_declared_resume_may_change_is_left_out():
    @dataclass
    class Stage:
        lr: float = opt(0.1, "Rate.")
        save_every: int = opt(5, "Every.", resume_may_change=True)

    assert resume_may_change(Stage) == {"save_every"}
    fp = stage_fingerprint(asdict(Stage()), volatile=resume_may_change(Stage))
    assert "save_every" not in fp and fp["lr"] == 0.1


def test_the_trainer_reads_the_property_of_its_own_fields(tmp_path):
    """TrainConfig's fields carry the property too: a resume may change stop_after, not lr."""
    assert resume_may_change(TrainConfig) == {"output_dir", "resume", "stop_after", "desc",
                                              "progress", "save_every", "keep_checkpoints", "report_to"}

    def run(**kw):
        torch.manual_seed(0)
        module = torch.nn.Linear(2, 1)
        cfg = TrainConfig(output_dir=tmp_path, progress=False, **kw)
        batches = [(torch.ones(1, 2), torch.zeros(1, 1))] * 4
        return Trainer(module, cfg).fit(
            batches, lambda m, b: torch.nn.functional.mse_loss(m(b[0]), b[1]))

    assert not run(lr=0.1, stop_after=2).finished
    with pytest.raises(TtxError, match="different --lr"):
        run(lr=0.2, resume=True)
    assert run(lr=0.1, resume=True, stop_after=None, save_every=3).finished


# what each stage let a resume change before the property existed (its own list then)
PINNED = {
    TLMConfig: {"input", "output", "resume", "stop_after", "progress", "cli", "generate", "eval",
                "device", "overwrite", "save_every"},
    MetaTrainConfig: {"input", "output", "resume", "stop_after", "progress", "device", "overwrite",
                      "save_every"},
    PerkConfig: set(),
    EncodeConfig: {"input", "output", "limit", "resume", "progress"},
    InplaceTTTConfig: {"output", "resume", "overwrite", "progress", "save_every", "device",
                       "stop_after"},              # --stop-after is new; the trainer skipped it
    DistillConfig: {"output", "resume", "overwrite", "progress", "save_every", "device",
                    "stop_after"},                 # --stop-after is new; the trainer skipped it
    VerifierConfig: {"input", "eval", "output", "model", "resume", "overwrite", "stop_after",
                     "progress", "cli", "save_every", "device"},
    TTRLConfig: {"input", "output", "resume", "overwrite", "stop_after", "progress", "save_every"},
    RLConfig: {"input", "output", "resume", "overwrite", "stop_after", "progress", "save_every",
               # the server's address and client settings (--engine openai) may change on resume
               "base_url", "concurrency", "timeout_s", "deadline_s", "max_retries",
               "served_adapters"},
}
PINNED[SFTConfig] = {"input", "from_records", "output", "model", "device", "resume", "overwrite",
                     "stop_after", "progress", "cli", "save_every"}
for _schema in (TLMConfig, MetaTrainConfig, InplaceTTTConfig, DistillConfig, VerifierConfig, TTRLConfig,
                RLConfig, SFTConfig):
    PINNED[_schema] = PINNED[_schema] | {"report_to"}     # a tracker never decides the weights


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda c: c.__name__)
def test_each_stage_lets_a_resume_change_what_it_did(schema):
    """tlm-adapt's and perk-metatrain's --save-every were skipped by the trainer's own list."""
    assert resume_may_change(schema) == PINNED[schema]


@pytest.mark.parametrize("steps", [2, 4, 7])
def test_order_run_names_the_micro_batches_a_step_cap_trains_on(tmp_path, steps):
    """tlm-adapt and verifier-train report what --steps really trained on through order_run."""
    taken = []

    def loss(module, batch):
        taken.append(batch)
        return module(torch.ones(1, 2)).sum()

    cfg = TrainConfig(output_dir=tmp_path, grad_accum=2, shuffle=True, seed=3, max_steps=steps,
                      progress=False)
    trainer = Trainer(torch.nn.Linear(2, 1), cfg)
    trainer.fit(list(range(5)), loss)
    assert trainer.order_run(5, steps) == taken


def test_one_padder_right_and_left():
    from ttx.train.pad import pad

    ids, mask = pad([[1, 2, 3], [4]], 0)
    assert ids.tolist() == [[1, 2, 3], [4, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, mask = pad([[1, 2], [], [3]], 9, left=True, width=3)
    assert ids.tolist() == [[9, 1, 2], [9, 9, 9], [9, 9, 3]]
    assert mask.tolist() == [[0, 1, 1], [0, 0, 0], [0, 0, 1]] and ids.dtype == torch.long


def test_one_lora_attach_refuses_a_missing_target():
    from ttx.train.lora import attach_lora

    model = torch.nn.Sequential()
    model.add_module("q_proj", torch.nn.Linear(2, 2))
    with pytest.raises(TtxError, match="no module named v_proj"):
        attach_lora(model, r=2, alpha=4, dropout=0.0, targets=["q_proj", "v_proj"])
