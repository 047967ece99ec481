"""Reinforcement learning at test time: a reusable GRPO core (grpo, loop) and TTRL with ETTRL's
entropy mechanisms on top (ttrl, etmr, ear)."""
