"""Scoring: answer extraction and equivalence, accuracy, pass@k, maj@k, ARISE, cost, plots
(the `score` stage itself is ttx/score.py).

Import the submodules directly (`from ttx.scoring.answers import extract_answer`); this package
imports nothing heavy so `ttx --help` stays instant.
"""
