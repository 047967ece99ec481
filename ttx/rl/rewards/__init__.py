"""Reward plug-ins of `ttx rl`, one file each (ttx.rl.plugins)."""
