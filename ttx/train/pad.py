"""The one padder the training stages share: token rows -> a padded tensor and its mask."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def pad(rows: Sequence[Sequence[int]], value: int, *, width: int | None = None,
        left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows padded with `value` to `width` (default: the longest row), mask of the real cells),
    both long. left: rows end at the last column (a batch of prompts generating on)."""
    width = max(len(r) for r in rows) if width is None else width
    ids = torch.full((len(rows), width), value, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        cells = slice(width - len(r), width) if left else slice(0, len(r))
        ids[i, cells] = torch.tensor(list(r), dtype=torch.long)
        mask[i, cells] = 1
    return ids, mask
