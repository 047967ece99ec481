"""Embeddings of candidate solutions for DORA's similarity matrix (arXiv 2506.15707).

Default: the policy's own last hidden states, mean-pooled over the candidate's tokens (hf engine).
`--embedder PATH`: any local Hugging Face encoder or decoder folder, mean-pooled the same way.
"""

from __future__ import annotations

from ttx.errors import TtxError


def make_embedder(engine, path: str | None):
    """A function texts -> [len(texts), dim] float tensor."""
    if path:
        from pathlib import Path

        import torch
        from transformers import AutoModel, AutoTokenizer

        from ttx.models import check_folder

        check_folder(Path(path), "embedding model")
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
            model = AutoModel.from_pretrained(path, dtype=torch.float32, trust_remote_code=False,
                                              use_safetensors=True).eval()
        except (OSError, ValueError, KeyError) as exc:
            raise TtxError(f"cannot load as an embedder ({exc})".splitlines()[0], path=str(path),
                           field="--embedder") from None
        from ttx.engines.cpu.packed import pack_linears

        pack_linears(model)                  # frozen, on CPU: oneDNN-packed weights
        return lambda texts: _mean_pooled(model, tokenizer, texts, "cpu")
    from ttx.engines.base import local

    policy = local(engine)
    if policy is None:
        raise TtxError("dora needs --embedder PATH with this engine (no local policy model)")
    return lambda texts: _mean_pooled(policy.model, policy.tokenizer, texts, policy.device)


def _mean_pooled(model, tokenizer, texts: list[str], device):
    """Mean of the last hidden state over each text's tokens (right-padded batch)."""
    import torch

    fallback = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    encoded = [tokenizer(t, add_special_tokens=False).input_ids[-512:] or [fallback]
               for t in texts]
    width = max(len(ids) for ids in encoded)
    ids = torch.full((len(encoded), width), fallback, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for i, row in enumerate(encoded):
        ids[i, :len(row)] = torch.tensor(row)
        mask[i, :len(row)] = 1
    ids, mask = ids.to(device), mask.to(device)
    with torch.inference_mode():
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    hidden = out.hidden_states[-1].float()
    m = mask[..., None].float()
    return ((hidden * m).sum(1) / m.sum(1)).cpu()
