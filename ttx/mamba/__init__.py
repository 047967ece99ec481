"""Distill a transformer into a hybrid Mamba-2 / attention model (M1, Mamba-in-the-Llama)."""
