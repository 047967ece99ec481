"""Problem sets that ttx generates itself (no downloads)."""
