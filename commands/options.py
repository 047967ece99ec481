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
