"""Typed option schemas: a stage's options are dataclass fields carrying their CLI help, the click
options are generated from them, and the library takes the dataclasses.

    @dataclass
    class Sampling:
        max_new_tokens: int = opt(256, "Tokens per trace.", type=click.IntRange(min=1))

    @cli_options(Sampling)                      # one click option per field, in field order
    def command(**params):
        sampling = build(Sampling, params)

An option whose default is None ("not given": the stage decides) also takes the word `none` on
the command line, which clears a value a --config file set (`--limit none`, `--stop none`). A
field declared `unset=True` has a real default in the library but reaches the command as None
when not given, so a stage can tell what the user set (the search knobs: a knob set for a
strategy that does not read it is refused). A field declared `resume_may_change=True` does not
decide a stage's artefact, so a --resume may give it another value (`resume_may_change(cls)`).
This module imports only click, so `ttx --help` stays light.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import click

CLEAR = "none"


def opt(default: Any = None, help: str = "", *, flag: str | None = None, short: str | None = None,
        type: Any = None, multiple: bool = False, is_flag: bool = False,
        secondary: str | None = None, envvar: str | None = None, metavar: str | None = None,
        show_default: bool | None = None, required: bool = False, cli: bool = True,
        unset: bool = False, aliases: tuple[str, ...] = (), resume_may_change: bool = False):
    """A dataclass field with its command-line form (module docstring)."""
    meta = {"help": help, "flag": flag, "short": short, "type": type, "multiple": multiple,
            "is_flag": is_flag, "secondary": secondary, "envvar": envvar, "metavar": metavar,
            "show_default": show_default, "required": required, "cli": cli, "unset": unset,
            "aliases": tuple(aliases)}
    metadata = {"cli": meta, "resume_may_change": resume_may_change}
    if multiple:
        return dataclasses.field(default=tuple(default or ()), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


class _Clearable(click.ParamType):
    """Another type that also accepts `none` (a cleared value)."""

    def __init__(self, inner):
        self.inner = click.types.convert_type(inner) if inner is not None else click.STRING
        self.name = self.inner.name

    def convert(self, value, param, ctx):
        if value is None or (isinstance(value, str) and value.strip().lower() == CLEAR):
            return None
        return self.inner.convert(value, param, ctx)

    def get_metavar(self, param, ctx=None):
        try:
            return self.inner.get_metavar(param, ctx)
        except TypeError:                     # click < 8.2 takes no ctx
            return self.inner.get_metavar(param)

    def shell_complete(self, ctx, param, incomplete):
        return self.inner.shell_complete(ctx, param, incomplete)


def _option(f: dataclasses.Field, defaults: dict):
    meta = f.metadata["cli"]
    default = None if meta["unset"] else defaults.get(f.name, f.default)
    names = [meta["flag"] or "--" + f.name.replace("_", "-")]
    if meta["secondary"]:
        names = [f"{names[0]}/{meta['secondary']}"]
    names += list(meta.get("aliases", ()))
    if meta["short"]:
        names.insert(0, meta["short"])
    kwargs: dict = {"help": meta["help"], "required": meta["required"]}
    if meta["is_flag"] and not meta["secondary"]:
        kwargs.update(is_flag=True, default=default)
    elif meta["secondary"]:
        kwargs.update(default=default)
    else:
        clearable = default is None or meta["multiple"]
        kwargs.update(default=None if meta["multiple"] and not default else default,
                      multiple=meta["multiple"],
                      type=_Clearable(meta["type"]) if clearable else meta["type"])
    if meta["envvar"]:
        kwargs["envvar"] = meta["envvar"]
    if meta["metavar"]:
        kwargs["metavar"] = meta["metavar"]
    show = meta["show_default"]
    kwargs["show_default"] = (default not in (None, (), False)) if show is None else show
    if meta["unset"] and f.default not in (None, (), False):
        kwargs["help"] = f"{meta['help']} (default {f.default})".replace(". (default", " (default")
    return click.option(*names, f.name, **kwargs)


class _Csv(click.ParamType):
    """A comma-separated list: "q_proj,v_proj" -> ("q_proj", "v_proj") (a YAML list too)."""

    name = "names"

    def convert(self, value, param, ctx):
        if isinstance(value, (list, tuple)):
            return tuple(str(v).strip() for v in value if str(v).strip())
        return tuple(v.strip() for v in str(value).split(",") if v.strip())


CSV = _Csv()


def fields_of(*classes) -> list[dataclasses.Field]:
    return [f for cls in classes for f in dataclasses.fields(cls)
            if f.metadata.get("cli", {}).get("cli")]


def cli_options(*classes, defaults: dict | None = None):
    """A decorator adding one click option per schema field of `classes`, in order."""
    def decorate(fn):
        for f in reversed(fields_of(*classes)):
            fn = _option(f, defaults or {})(fn)
        return fn
    return decorate


def build(cls, options: dict, /, **overrides):
    """An instance of schema `cls` from click's options (fields not in them keep defaults);
    a multiple option given `none` keeps only what follows its last `none`."""
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in overrides:
            values[f.name] = overrides[f.name]
        elif f.name in options:
            value = options[f.name]
            if value is None and f.metadata.get("cli", {}).get("unset"):
                continue                                  # not given: the library's default
            if f.metadata.get("cli", {}).get("multiple"):
                items = list(value or ())
                while None in items:
                    items = items[items.index(None) + 1:]
                value = tuple(items)
            values[f.name] = value
    return cls(**values)


def given(cls, params: dict) -> set[str]:
    """The schema fields of `cls` set to something other than None (given by the user)."""
    return {f.name for f in dataclasses.fields(cls) if params.get(f.name) is not None}


def resume_may_change(*classes) -> frozenset[str]:
    """The fields of `classes` declared `resume_may_change=True`: a --resume may change them (they
    do not decide the artefact); a resume that changes any other is refused."""
    return frozenset(f.name for cls in classes for f in dataclasses.fields(cls)
                     if f.metadata.get("resume_may_change"))
