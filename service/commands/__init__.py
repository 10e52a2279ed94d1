"""More `drip` subcommands, one module per area. Each module defines `register(main: click.Group)`.

`service.cli` calls `register` of every module in this package, so an area adds its commands by adding
a file here, without editing cli.py.
"""
from __future__ import annotations

import importlib
import pkgutil

import click


def register_all(main: click.Group) -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "register"):  # context.py holds what the commands share
            module.register(main)
