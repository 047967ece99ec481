"""`python -m ttx` and `accelerate launch -m ttx` entry point."""

from ttx.cli import cli

if __name__ == "__main__":
    cli()
