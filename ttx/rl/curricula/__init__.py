"""`ttx rl --curriculum NAME`: ttx/rl/curricula/<name>.py defines PLUGIN (ttx.rl.curriculum)."""
