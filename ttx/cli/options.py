"""Options shared by several subcommands, and `--config FILE.yaml` as click's default_map."""

from __future__ import annotations

import click


def _load_config(ctx: click.Context, param: click.Parameter, value: str | None):
    """Load YAML option defaults for this subcommand; options on the command line still win."""
    if not value:
        return value
    import yaml

    try:
        with open(value, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise click.BadParameter(f"{value}: no such file") from None
    except yaml.YAMLError as exc:
        raise click.BadParameter(f"{value}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise click.BadParameter(f"{value}: expected a mapping of option names to values")
    known = option_names(ctx.command)
    defaults = {}
    for key, v in data.items():
        name = known.get(str(key).replace("-", "_"))
        if name is None:
            raise click.BadParameter(f"{value}: unknown option '{key}' for {ctx.command.name}")
        defaults[name] = v
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


def option_names(command: click.Command) -> dict[str, str]:
    """Config keys -> parameter names: a key may be the parameter's name or its long flag
    (`lambda` for `--lambda`, whose parameter is `lam`), with - or _."""
    names = {}
    for p in command.params:
        names[p.name] = p.name
        for opt in getattr(p, "opts", []):
            if opt.startswith("--"):
                names[opt[2:].replace("-", "_")] = p.name
    return names


def config_option(f):
    return click.option("--config", type=click.Path(dir_okay=False), is_eager=True,
                        expose_value=False, callback=_load_config,
                        help="YAML file of option defaults (the command line wins).")(f)


def compare_options(help: str):
    """--compare NAME=FILE, repeatable, and more NAME=FILE after one flag (`--compare a=x b=y`):
    the extra ones arrive as arguments, each of which must be NAME=FILE."""
    def decorate(f):
        f = click.argument("more_runs", nargs=-1, metavar="[NAME=FILE]...")(f)
        return click.option("--compare", multiple=True, metavar="NAME=FILE", help=help)(f)
    return decorate


def compared_runs(ctx: click.Context, compare: tuple, more_runs: tuple) -> tuple[tuple, dict]:
    """The runs of --compare and the NAME=FILE arguments after it, in order, and the command's
    options with them as one `compare` (what the manifest records)."""
    for arg in more_runs:
        name, sep, files = arg.partition("=")
        if not sep or not name or not files:
            raise click.UsageError(f"unexpected argument {arg!r}: a run to compare is NAME=FILE "
                                   "(inputs take -i)")
    runs = tuple(compare) + tuple(more_runs)
    options = {k: v for k, v in ctx.params.items() if k != "more_runs"}
    return runs, {**options, "compare": runs}
