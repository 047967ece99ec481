"""ttrl's options: one schema for the command line (ttx.options) and the library. Light:
`ttx --help` imports it."""

from __future__ import annotations

from dataclasses import dataclass

import click

from ttx.engines.options import device_field, dtype_field, model_field
from ttx.options import opt
from ttx.train import options as T


@dataclass
class TTRLConfig:
    input: str = T.input(help="Questions JSONL (tts-run's format); gold answers, if any, are only logged.")
    output: str = T.output(
        help="Folder: the PEFT adapter (or, with --full, the model), train_log.jsonl, rollouts.jsonl, "
        "ttx_manifest.json."
    )
    model: str = model_field()
    device: str = device_field()
    dtype: str = dtype_field()
    full: bool = opt(False, "Full fine-tuning instead of LoRA.", is_flag=True)
    lora_r: int = T.lora_r()
    lora_alpha: int = T.lora_alpha()
    lora_dropout: float = T.lora_dropout()
    lora_targets: tuple[str, ...] = T.lora_targets()
    n_votes: int = opt(
        64,
        "Responses sampled per question for the majority vote.",
        type=click.IntRange(min=1),
        aliases=("--n",),
    )
    n_train: int | None = opt(
        None, "Of those, trained on (default: half the votes, TTRL's 32 of 64).", type=click.IntRange(min=1)
    )
    temperature: float = opt(1.0, "Rollout temperature.", type=click.FloatRange(min=0))
    top_p: float = T.top_p()
    max_new_tokens: int = opt(3072, "Tokens per sampled response.", type=click.IntRange(min=1))
    batch_size: int = T.batch_size(8, "Questions per rollout step.")
    mini_batch_size: int = opt(1, "Questions per optimizer update.", type=click.IntRange(min=1))
    micro_batch_size: int = opt(2, "Sequences per forward pass.", type=click.IntRange(min=1))
    ppo_epochs: int = opt(1, "Passes over each rollout batch.", type=click.IntRange(min=1))
    # --epochs, the other stages' name for passes over the data, is an alias
    episodes: int = T.epochs(
        10, "Passes over the questions (the paper: 10 on MATH-500, 30 AMC, 80 AIME).", aliases=("--epochs",)
    )
    steps: int | None = T.steps(None, "Rollout steps (overrides --episodes).")
    lr: float = T.lr(5e-07, "AdamW learning rate (the paper's, for full fine-tuning; LoRA wants far more).")
    warmup_ratio: float = T.warmup_ratio(0.03)
    weight_decay: float = T.weight_decay(0.01)
    max_grad_norm: float = T.max_grad_norm(1.0, "0: no clipping.")
    clip_low: float = opt(0.2, "ε_low of the clipped ratio.", type=click.FloatRange(min=0))
    clip_high: float = opt(0.2, "ε_high of the clipped ratio.", type=click.FloatRange(min=0))
    clip_c: float | None = opt(
        3.0, "Dual-clip bound for negative advantages (0: off).", type=click.FloatRange(min=0)
    )
    kl_coef: float = opt(
        0.001, "β of the k3 KL to the initial policy (0: no reference pass).", type=click.FloatRange(min=0)
    )
    etmr: bool = opt(False, "ETTRL's entropy-fork tree rollouts instead of --n-votes samples.", is_flag=True)
    etmr_trees: int = opt(12, "M: trees per question.", type=click.IntRange(min=1))
    etmr_forks: int = opt(2, "N: highest-entropy fork points per tree.", type=click.IntRange(min=0))
    etmr_branches: int = opt(2, "B: branches per fork point.", type=click.IntRange(min=0))
    ear: bool = opt(False, "ETTRL's Adv-Res: advantages scaled by relative response entropy.", is_flag=True)
    adv_clip: float | None = opt(
        None,
        "ETTRL's Adv-Clip: clip advantages to [-β, β] (the paper: 2).",
        type=click.FloatRange(min=0, min_open=True),
    )
    invalid_votes: str = opt(
        "lm-eval",
        "lm-eval: responses without an answer vote as one class; skip: they do not vote.",
        type=click.Choice(["lm-eval", "skip"]),
    )
    question_field: str = T.question_field()
    answer_field: str = T.answer_field(help="Gold answers (logged only).")
    id_field: str = T.id_field()
    instruction: str | None = opt(None, "Text appended to each question (as tts-run --instruction).")
    system: str | None = opt(None, "System message (as tts-run --system).")
    chat: bool = opt(True, "Wrap prompts in the model's chat template.", secondary="--no-chat")
    limit: int | None = T.limit(help="Only the first N questions.")
    seed: int = T.seed()
    save_every: int = T.save_every(5, "Checkpoint every N rollout steps (0: only when stopping early).")
    resume: bool = T.resume(help="Continue from the newest checkpoint in the output.")
    overwrite: bool = T.overwrite(help="Replace an existing output folder.")
    stop_after: int | None = T.stop_after(help="Stop after N rollout steps, checkpointed; rerun with --resume.")
    progress: bool = T.progress()
    report_to: str = T.report_to()


def _reward_choice():
    from ttx.rl.plugins import reward_names

    return click.Choice(reward_names())


def _advantage_choice():
    from ttx.rl.plugins import advantage_names

    return click.Choice(advantage_names())


def _curriculum_choice():
    from ttx.rl.curriculum import curriculum_names

    return click.Choice(curriculum_names())


@dataclass
class RLConfig(TTRLConfig):
    """`ttx rl`'s options: ttrl's, the plug-ins' names, and each plug-in's own options (one block
    per plug-in below; a plug-in lists the fields it owns in its `options`, ttx.rl.plugins)."""

    answer_field: str = T.answer_field(help="Gold answers (rewards that need them refuse records without).")
    kl_coef: float | None = opt(
        None,
        "β of the k3 KL to the initial policy (0: no reference pass; default: the reward's, "
        "0.001 for majority and gold, 0.005 for label-free rewards, 0.04 for hapo).",
        type=click.FloatRange(min=0),
    )
    reward: str = opt("majority", "Reward plug-in (ttx/rl/rewards/).", type=_reward_choice())
    advantage: str = opt("grpo", "Advantage estimator plug-in (ttx/rl/advantages/).", type=_advantage_choice())
    # -- hapo
    hapo_weight: float = opt(1.0, "hapo: w, the weight of the length reward (HAPO's w_lr).",
                             type=click.FloatRange(min=0))
    # -- discover (TTT-Discover: rewards/discover.py, advantages/entropic.py)
    discover_c: float = opt(1.0, "discover: c, the PUCT exploration weight (TTT-Discover's puct_c).",
                            type=click.FloatRange(min=0))
    discover_topk: int = opt(2, "discover: children kept per archived state (0: all).",
                             type=click.IntRange(min=0))
    discover_buffer: int = opt(1000, "discover: states kept per problem's archive.", type=click.IntRange(min=1))
    entropic_beta: float | None = opt(
        None, "entropic: a fixed β (default: per group, so that KL(q_β || uniform) = ln 2).",
        type=click.FloatRange(min=0, min_open=True))
    # -- mrt
    mrt_alpha: float = opt(1.0, "mrt: α, the weight of the progress bonus (reward = outcome + α·progress).",
                           type=click.FloatRange(min=0))
    mrt_samples: int = opt(8, "mrt: m, forced answers sampled to estimate J after each episode (MRT's -K 8).",
                           type=click.IntRange(min=1))
    mrt_answer_tokens: int = opt(256, "mrt: tokens per forced answer (MRT's analysis: 4096).",
                                 type=click.IntRange(min=1))
    mrt_temperature: float = opt(0.6, "mrt: temperature of the forced answers (MRT's analysis: 0.6).",
                                 type=click.FloatRange(min=0))
    mrt_max_episodes: int = opt(99, "mrt: episode boundaries per response, the rest is one episode "
                                "(MRT's max_steps).", type=click.IntRange(min=0))
    mrt_group: int = opt(1, "mrt: consecutive episodes merged into one (MRT's group_size; its regret "
                         "analysis: 10).", type=click.IntRange(min=1))
    mrt_budget: int | None = opt(None, "mrt: token budget C0 of the logged regret (default: prompt tokens + "
                                 "--max-new-tokens).", type=click.IntRange(min=1))
    # -- rollouts on a server (--engine openai: ttx/rl/served.py)
    engine: str = opt("hf", "hf: rollouts in this process; openai: on a vLLM server that loads the current "
                      "LoRA adapter at each step (runtime LoRA API).", type=click.Choice(["hf", "openai"]))
    base_url: str | None = opt(None, "openai: server URL, e.g. http://127.0.0.1:8000/v1 (env TTX_BASE_URL).",
                               envvar="TTX_BASE_URL", resume_may_change=True)
    concurrency: int = opt(8, "openai: requests in flight.", type=click.IntRange(min=1), resume_may_change=True)
    timeout_s: float | None = opt(None, "openai: seconds the server may stay silent before the request is "
                                  "retried (env TTX_TIMEOUT_S; default 600).", flag="--timeout",
                                  type=click.FloatRange(min=0, min_open=True), envvar="TTX_TIMEOUT_S",
                                  resume_may_change=True)
    deadline_s: float | None = opt(None, "openai: seconds one attempt of a request may take in all (env "
                                   "TTX_DEADLINE_S).", flag="--deadline",
                                   type=click.FloatRange(min=0, min_open=True), envvar="TTX_DEADLINE_S",
                                   resume_may_change=True)
    max_retries: int | None = opt(None, "openai: retries of a failed request (env TTX_MAX_RETRIES; default 4).",
                                  type=click.IntRange(min=0), envvar="TTX_MAX_RETRIES", resume_may_change=True)
    served_adapters: str | None = opt(None, "openai: folder each step's adapter is saved to, a path the server "
                                      "reads as it is (default: <output>/served).", resume_may_change=True)
    # -- curriculum (ttx/rl/curricula/); ttcs: TTCS's synthesizer (ttx/rl/curricula/ttcs.py)
    curriculum: str | None = opt(None, "Curriculum plug-in (ttx/rl/curricula/): questions each step adds "
                                 "to the test questions.", type=_curriculum_choice())
    ttcs_variants: int = opt(4, "ttcs: variants the synthesizer writes per test question (its GRPO group).",
                             type=click.IntRange(min=2))
    ttcs_solver_votes: int = opt(10, "ttcs: solver responses per variant for its majority share p "
                                 "(TTCS's n=10).", type=click.IntRange(min=1))
    ttcs_max_new_tokens: int = opt(1024, "ttcs: tokens per synthesizer response (TTCS's 1024).",
                                   type=click.IntRange(min=1))
    ttcs_temperature: float = opt(1.0, "ttcs: the synthesizer's sampling temperature (TTCS's 1.0).",
                                  type=click.FloatRange(min=0, min_open=True))
    ttcs_lr: float = opt(1e-6, "ttcs: the synthesizer's AdamW learning rate, constant (TTCS's 1e-6, full "
                         "fine-tuning; LoRA wants far more).", type=click.FloatRange(min=0, min_open=True))
    ttcs_kl_coef: float = opt(0.01, "ttcs: β of the synthesizer's KL to the base model (TTCS's 0.01).",
                              type=click.FloatRange(min=0))
    ttcs_keep: int | None = opt(None, "ttcs: most synthetic questions the solver trains on per step "
                                "(default: as many as the step's test questions).", type=click.IntRange(min=0))
    ttcs_low: float = opt(0.25, "ttcs: a variant is kept when its p is at least this (TTCS's 0.25).",
                          type=click.FloatRange(0, 1))
    ttcs_high: float = opt(0.75, "ttcs: ... and at most this (TTCS's 0.75).", type=click.FloatRange(0, 1))
