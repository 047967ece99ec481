"""PERK (Chen et al., 2025): meta-learn a LoRA that memorises long context in a few gradient steps."""
