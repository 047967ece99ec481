"""Subcommands listed in `ttx --help` whose stage is not built yet: they say so and exit 2."""

import sys

import click


def planned_command(name: str, short_help: str) -> click.Command:
    @click.command(name=name, short_help=short_help, context_settings={"ignore_unknown_options": True})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def command(args):
        click.echo(f"ttx: {name} is not built yet in this version of ttx.", err=True)
        sys.exit(2)

    command.help = short_help
    return command
