"""In-Place Test-Time Training (Feng et al., 2026): MLP down-projections as chunk-wise fast weights."""
