"""`ttx inplace-ttt-convert`: a gated-MLP checkpoint -> an In-Place TTT checkpoint (+ training).

    ttx inplace-ttt-convert --model M -o ttt_dir [--layers 0,6,12] [--chunk 1024] [--ttt-lr 3]
    ttx inplace-ttt-convert --model ttt_dir --train long_docs.jsonl -o ttt_trained

Conversion keeps every original weight and adds, per converted layer, the target conv (zero) and
W_target, so right after conversion the model computes exactly what the original did.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict
from pathlib import Path

from ttx.errors import TtxError
from ttx.inplace_ttt.config import InplaceTTTConfig
from ttx.io import plain_modes

MLP_PARTS = ("gate_proj", "up_proj", "down_proj", "act_fn")


def parse_layers(text: str | None) -> list[int] | None:
    if text is None or str(text).strip() in ("", "default"):
        return None
    try:
        return sorted({int(x) for x in str(text).replace(" ", "").split(",") if x != ""})
    except ValueError:
        raise TtxError(f"--layers {text!r}: expected comma-separated layer numbers, e.g. 0,6,12",
                       field="layers") from None


def is_converted(model) -> bool:
    return str(getattr(model.config, "model_type", "")).startswith("inplace_ttt_")


def check_gated_mlp(model, folder=None) -> str:
    """The family name when `model` is a gated-MLP causal LM ttx can convert, else TtxError."""
    from ttx.inplace_ttt.modeling import FAMILIES

    family = getattr(model.config, "model_type", None)
    where = str(folder) if folder is not None else None
    if family not in FAMILIES:
        raise TtxError(f"cannot convert a '{family}' checkpoint: In-Place TTT needs a gated-MLP "
                       f"family ({', '.join(FAMILIES)})", path=where, field="model_type")
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None or not all(all(hasattr(layer.mlp, p) for p in MLP_PARTS) for layer in layers):
        raise TtxError("cannot convert: the decoder layers have no gated MLP "
                       "(gate_proj, up_proj, down_proj)", path=where)
    return family


def convert(model, *, layers: list[int] | None = None, chunk: int = 4096, lr: float = 3.0,
            ttt_input: str = "hidden", seed: int = 0, folder=None):
    """A new In-Place TTT model holding `model`'s weights (conv = 0: the same function)."""

    from ttx.inplace_ttt.modeling import CONFIGS, MODELS

    family = check_gated_mlp(model, folder)
    n = model.config.num_hidden_layers
    layers = list(range(0, n, 6)) if layers is None else layers
    bad = [i for i in layers if not 0 <= i < n]
    if bad or not layers:
        raise TtxError(f"--layers: {bad or 'none'} outside the model's layers 0..{n - 1}",
                       field="layers")
    if chunk < 1:
        raise TtxError("--chunk must be at least 1", field="chunk")
    base = model.config.to_dict()
    for key in ("model_type", "architectures", "transformers_version", "auto_map"):
        base.pop(key, None)
    config = CONFIGS[family](**base, ttt_layers=layers, ttt_chunk=chunk, ttt_lr=lr,
                             ttt_input=ttt_input, ttt_base_model_type=family)
    config.architectures = [MODELS[family].__name__]
    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device
    new = MODELS[family](config).to(dtype=dtype, device=device)
    missing, unexpected = new.load_state_dict(model.state_dict(), strict=False)
    added = [k for k in missing if ".mlp.ttt_" not in k]
    if added or unexpected:
        raise TtxError(f"weights do not map onto the converted model (missing {added[:3]}, "
                       f"unexpected {unexpected[:3]})", path=str(folder) if folder else None)
    for i, mlp in new.ttt_mlps().items():
        mlp.reset_ttt_parameters(seed=seed * 1000 + i)
    new.generation_config = model.generation_config
    new.tie_weights()
    return new.eval()


def max_logit_difference(a, b, vocab: int, length: int = 256, seed: int = 0) -> float:
    """max |logits_a - logits_b| on one random sequence (a quick self-check, float32 compare)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (1, length), generator=g).to(next(a.parameters()).device)
    with torch.no_grad():
        return float((a(ids).logits.float() - b(ids).logits.float()).abs().max())


def save_checkpoint_folder(model, tokenizer, output: Path) -> None:
    """Write model + tokenizer into `output` so a reader never sees a half checkpoint:
    everything goes to a temporary folder first, config.json is moved in last."""
    output.mkdir(parents=True, exist_ok=True)
    tmp = output / f".tmp-final-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        plain_modes(tmp)
        names = sorted(p.name for p in tmp.iterdir())
        for name in [n for n in names if n != "config.json"] + ["config.json"]:
            os.replace(tmp / name, output / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_convert(cfg: InplaceTTTConfig) -> dict:
    """The stage: load, convert (unless already converted), optionally train, save, manifest."""
    from ttx.io import now_iso, output_dir, write_manifest
    from ttx.models import load_model

    started = now_iso()
    output = Path(cfg.output)
    resuming = bool(cfg.resume and cfg.train and (output / "checkpoints").is_dir()
                    and not (output / "config.json").exists())
    if cfg.resume and not resuming and output.is_dir() and any(output.iterdir()) \
            and not cfg.overwrite:
        raise TtxError("--resume continues an interrupted training run (-i, and a checkpoints "
                       "folder without a finished checkpoint); this folder holds none",
                       path=str(output))
    output_dir(output, resume=resuming, overwrite=cfg.overwrite)
    model, tokenizer, folder = load_model(cfg.model, cfg.device, cfg.dtype)
    layers = parse_layers(cfg.layers)
    settings = {"ttt_layers": layers, "ttt_chunk": cfg.chunk, "ttt_lr": cfg.ttt_lr,
                "ttt_input": cfg.ttt_input}
    summary: dict = {"source": str(folder)}
    if is_converted(model):
        for key, value in settings.items():
            have = getattr(model.config, key)
            if value is not None and value != have:
                raise TtxError(f"the model is already converted with {key}={have}; leave the "
                               f"option out to keep it", path=str(folder), field=key)
        summary["converted"] = False
    else:
        original = model
        model = convert(original, layers=layers, chunk=cfg.chunk or 4096,
                        lr=cfg.ttt_lr if cfg.ttt_lr is not None else 3.0,
                        ttt_input=cfg.ttt_input or "hidden", seed=cfg.seed, folder=folder)
        summary["converted"] = True
        summary["max_abs_logit_diff_after_conversion"] = max_logit_difference(
            original, model, model.config.vocab_size)
        del original
    mc = model.config
    summary.update(ttt_layers=mc.resolved_ttt_layers(), ttt_chunk=mc.ttt_chunk,
                   ttt_lr=mc.ttt_lr, ttt_input=mc.ttt_input,
                   parameters=sum(p.numel() for p in model.parameters()),
                   ttt_parameters=sum(p.numel() for n, p in model.named_parameters()
                                      if ".mlp.ttt_" in n))
    inputs = []
    trainer = None
    if cfg.train:
        from ttx.inplace_ttt.train import train_converted

        inputs.append(cfg.train)
        trainer, stats = train_converted(model, tokenizer, output, cfg, source=folder)
        summary["train"] = stats
        if not stats["finished"]:
            return summary               # stopped early: the checkpoint under output/ resumes
        if not trainer.is_main:          # several processes: rank 0 writes the folder
            trainer.accelerator.wait_for_everyone()
            return summary
    save_checkpoint_folder(model, tokenizer, output)
    if trainer is not None:
        trainer.remove_checkpoints()
    write_manifest(output, stage="inplace-ttt-convert", options=asdict(cfg),
                   inputs=[str(folder / "config.json"), *inputs], started=started, summary=summary)
    if trainer is not None:
        trainer.accelerator.wait_for_everyone()
    return summary
