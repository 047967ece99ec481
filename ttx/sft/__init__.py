"""`ttx sft`: supervised fine-tuning on (prompt, response) pairs, CE or the pass@N-aligned DCO loss."""
