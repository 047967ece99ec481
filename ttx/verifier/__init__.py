"""verifier-train: outcome and process reward models trained on a model's own scored traces."""
