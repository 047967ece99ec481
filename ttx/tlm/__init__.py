"""Test-Time Learning (Hu et al., ICML 2025): LoRA on unlabeled test inputs by perplexity minimisation."""
