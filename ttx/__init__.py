"""ttx: test-time compute for language models."""

__version__ = "0.1.0"
