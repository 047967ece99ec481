"""What PERK meta-learns, in one nn.Module: the LoRA initialisation (inside a PEFT model whose base
is frozen), the per-step per-tensor inner learning rates (LSLR) and the token-weighting head.

A PERK folder holds
  adapter/                   the meta-learned LoRA init, PEFT format (peft.PeftModel.from_pretrained)
  perk_state.safetensors     inner_lrs [steps, tensors] and the weighting head's weights
  perk_config.json           model, LoRA settings, inner steps, segment length, tensor order
  ttx_manifest.json          what produced it
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from ttx.errors import TtxError
from ttx.io import plain_modes
from ttx.perk.config import DEFAULT_TARGETS, PerkConfig
from ttx.perk.weighting import TokenWeighting

STATE_FILE = "perk_state.safetensors"
CONFIG_FILE = "perk_config.json"


class PerkModule(nn.Module):
    def __init__(self, peft_model, cfg: PerkConfig):
        super().__init__()
        self.model = peft_model
        self.cfg = cfg
        self.lora_names = [n for n, p in peft_model.named_parameters() if "lora_" in n]
        if not self.lora_names:
            raise TtxError(f"no LoRA weights: none of {', '.join(cfg.target_modules)} found in "
                           f"the model", field="target_modules")
        for n, p in peft_model.named_parameters():
            p.requires_grad_(n in self.lora_names)   # base frozen in both loops
        ref = dict(peft_model.named_parameters())[self.lora_names[0]]
        self.inner_lrs = nn.Parameter(torch.full((cfg.inner_steps, len(self.lora_names)),
                                                 cfg.inner_lr, device=ref.device))
        hidden = peft_model.get_base_model().config.hidden_size
        self.weighting = TokenWeighting(hidden, cfg.head_width).to(ref.device)

    def lora_init(self) -> dict[str, torch.Tensor]:
        """The LoRA weights the inner loop starts from (the meta-learned parameters)."""
        params = dict(self.model.named_parameters())
        return {n: params[n] for n in self.lora_names}

    @torch.no_grad()
    def load_lora(self, values: dict[str, torch.Tensor]) -> None:
        """Write LoRA weights into the PEFT model in place (to generate with adapted weights)."""
        params = dict(self.model.named_parameters())
        for n in self.lora_names:
            params[n].copy_(values[n])

    def snapshot(self) -> dict[str, torch.Tensor]:
        return {n: t.detach().clone() for n, t in self.lora_init().items()}


def build(base_model, cfg: PerkConfig) -> PerkModule:
    """A fresh PERK module around a loaded base model (LoRA B = 0, so it starts as the base)."""
    from ttx.train.lora import attach_lora, module_names

    names = module_names(base_model)
    targets = [t for t in cfg.target_modules if t in names]      # those the model has
    if not targets:
        raise TtxError(f"none of the target modules {', '.join(cfg.target_modules)} exist in "
                       "this model", field="target_modules")
    return PerkModule(attach_lora(base_model, r=cfg.lora_r, alpha=cfg.lora_alpha,
                                  dropout=cfg.lora_dropout, targets=targets, rslora=True), cfg)


def save(module: PerkModule, folder: Path, base_folder: Path | None = None) -> None:
    """Write the PERK folder's weights and config (the caller writes the manifest)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    module.model.save_pretrained(folder / "adapter", safe_serialization=True)
    if base_folder is not None:
        from ttx.models import write_base

        write_base(folder, module.cfg.model, base_folder)   # perk-encode checks its base
    state = {"inner_lrs": module.inner_lrs.detach().cpu().contiguous()}
    for n, t in module.weighting.state_dict().items():
        state[f"weighting.{n}"] = t.detach().cpu().contiguous()
    tmp = folder / f".{STATE_FILE}.tmp"
    save_file(state, str(tmp))
    tmp.replace(folder / STATE_FILE)
    plain_modes(folder)                       # safetensors writes 0600; the JSON beside is 0644
    config = {**asdict(module.cfg), "lora_names": module.lora_names}
    tmp = folder / f".{CONFIG_FILE}.tmp"
    tmp.write_text(json.dumps(config, indent=1) + "\n")
    tmp.replace(folder / CONFIG_FILE)


def read_config(folder: Path) -> tuple[PerkConfig, list[str]]:
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise TtxError("not a PERK folder (no perk_config.json; make one with ttx perk-metatrain)",
                       path=str(folder))
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise TtxError(f"not valid JSON ({exc.msg})", path=str(path), line=exc.lineno) from None
    names = data.pop("lora_names", [])
    data["target_modules"] = tuple(data.get("target_modules", DEFAULT_TARGETS))
    known = set(PerkConfig.__dataclass_fields__)
    return PerkConfig(**{k: v for k, v in data.items() if k in known}), names


def load(base_model, folder: Path, base_folder: Path | None = None) -> PerkModule:
    """Rebuild the meta-learned module on `base_model` from a PERK folder (refused when it was
    meta-trained on another base than `base_folder`)."""
    from peft import PeftModel
    from safetensors.torch import load_file

    folder = Path(folder)
    if base_folder is not None:
        from ttx.models import check_base

        check_base(folder, base_folder, "PERK folder")
    cfg, names = read_config(folder)
    try:
        peft_model = PeftModel.from_pretrained(base_model, folder / "adapter", is_trainable=True)
    except (ValueError, KeyError, RuntimeError, OSError) as exc:
        raise TtxError(f"the adapter does not fit this model ({str(exc).splitlines()[0]})",
                       path=str(folder / "adapter")) from None
    module = PerkModule(peft_model, cfg)
    if names and names != module.lora_names:
        raise TtxError("the adapter's LoRA tensors differ from the ones the step sizes were "
                       "learned for", path=str(folder))
    state = load_file(str(folder / STATE_FILE))
    if tuple(state["inner_lrs"].shape) != tuple(module.inner_lrs.shape):
        raise TtxError(f"inner_lrs has shape {tuple(state['inner_lrs'].shape)}, expected "
                       f"{tuple(module.inner_lrs.shape)}", path=str(folder / STATE_FILE))
    with torch.no_grad():
        module.inner_lrs.copy_(state["inner_lrs"])
    head = {k.split(".", 1)[1]: v for k, v in state.items() if k.startswith("weighting.")}
    try:
        module.weighting.load_state_dict(head)
    except RuntimeError as exc:
        raise TtxError(f"weighting head does not fit this model ({str(exc).splitlines()[0]})",
                       path=str(folder / STATE_FILE)) from None
    return module
