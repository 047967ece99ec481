"""Advantage estimators of `ttx rl`, one file each (ttx.rl.plugins)."""
