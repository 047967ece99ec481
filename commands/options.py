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


def model_options(f):
    f = click.option("--dtype", default="auto", show_default=True,
                     type=click.Choice(["auto", "float32", "bfloat16", "float16"]),
                     help="Weights dtype (auto: float32 on CPU, bfloat16 on GPU).")(f)
    f = click.option("--device", default="auto", show_default=True,
                     help="cpu, cuda, cuda:N or auto (cuda when present).")(f)
    f = click.option("--model", "-m", default="smollm2-135m-instruct", show_default=True,
                     help="Model alias, Hugging Face folder, or .gguf file.")(f)
    return f


def engine_options(f):
    """--engine, the model options, and the openai engine's --base-url and --concurrency."""
    f = click.option("--concurrency", type=click.IntRange(min=1), default=8, show_default=True,
                     help="openai: requests in flight.")(f)
    f = click.option("--base-url", envvar="TTX_BASE_URL",
                     help="openai: server URL, e.g. http://127.0.0.1:8000/v1 "
                          "(env TTX_BASE_URL).")(f)
    f = model_options(f)
    return click.option("--engine", type=click.Choice(["hf", "openai"]), default="hf",
                        show_default=True, help="hf: local transformers; openai: a server.")(f)


def overwrite_option(f):
    """--overwrite, the same in every stage that writes an output folder (ttx.io.output_dir)."""
    return click.option("--overwrite", is_flag=True,
                        help="Replace the output folder if it already holds something "
                             "(default: refused; --resume continues an interrupted run).")(f)
