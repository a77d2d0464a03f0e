"""
Sphinx helpers for msrpc's documentation, so that the pages cannot drift from the code:

``.. msrpc-options:: msrpc.tap:ServerOptions``
    A table of a ``twisted.python.usage.Options`` class's options (name, short form,
    default, help text), read from the class itself, as ``--help`` prints them.  The
    argument may also name a list of ``optParameters`` rows (a registry backend's
    ``OPTIONS``).  ``:skip-registry:`` leaves out the registry options (documented on the
    registry pages); ``:skip: help,version`` leaves out the named ones.

The API check
    Every module of the ``msrpc`` package must be documented by an ``automodule``
    somewhere (the reference under ``api/``); a module without one is a warning, which
    the ``-W`` build turns into an error naming it.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from typing import Any

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

log = logging.getLogger(__name__)

#: Modules that are not API: ``python -m msrpc`` runs the command when imported.
NOT_API = {"msrpc.__main__"}


def _load(spec: str) -> Any:
    module_name, _, attribute = spec.partition(":")
    target: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        target = getattr(target, part)
    return target


def _rows_of_options_class(cls: Any) -> list[tuple[str, str, str, str]]:
    """(long, short, default, help) for each option of a usage.Options class, in the
    order ``--help`` lists them."""
    options = cls()
    shorts = {long: short for short, long in options.synonyms.items()
              if len(short) == 1 and short != long}
    rows = []
    for spec in options.longOpt:
        name = spec.rstrip("=")
        takes_value = spec.endswith("=")
        if name in options.defaults:
            value = options.defaults[name]
            if not takes_value:
                default = "off"
            else:
                default = "" if value in (None, "") else str(value)
        else:
            default = ""
        help_text = str(options.docs.get(name) or "").strip()
        # Handlers (opt_NAME methods) start their docstring with the value's form:
        # "NAME=module:Class  Serve a service".  It goes with the option's name.
        form = re.match(r"(\S+) {2,}(.*)", help_text, re.S)
        if form is not None and takes_value:
            name, help_text = f"{name} {form.group(1)}", form.group(2)
        rows.append((name, shorts.get(name.split()[0], ""), default,
                     " ".join(help_text.split())))
    return rows


def _rows_of_parameters(parameters: Any) -> list[tuple[str, str, str, str]]:
    rows = []
    for row in parameters:
        name, short, default, help_text = row[0], row[1], row[2], row[3]
        rows.append((name, short or "", "" if default in (None, "") else str(default),
                     " ".join(str(help_text or "").split())))
    return rows


def registry_option_names() -> set[str]:
    from msrpc.registry.options import registry_parameters

    return {row[0] for row in registry_parameters()}


class OptionsTable(SphinxDirective):
    required_arguments = 1
    option_spec = {"skip-registry": directives.flag, "skip": directives.unchanged}

    def run(self) -> list[nodes.Node]:
        target = _load(self.arguments[0])
        if isinstance(target, type):
            rows = _rows_of_options_class(target)
        else:
            rows = _rows_of_parameters(target)
        skip = {name.strip() for name in self.options.get("skip", "").split(",")
                if name.strip()}
        if "skip-registry" in self.options:
            skip |= registry_option_names()
        rows = [row for row in rows if row[0].split()[0] not in skip]
        return [self._table(rows)]

    def _table(self, rows: list[tuple[str, str, str, str]]) -> nodes.table:
        table = nodes.table(classes=["msrpc-options"])
        group = nodes.tgroup(cols=3)
        table += group
        for width in (30, 14, 56):
            group += nodes.colspec(colwidth=width)
        head = nodes.thead()
        group += head
        head += self._row([nodes.Text("option"), nodes.Text("default"),
                           nodes.Text("meaning")])
        body = nodes.tbody()
        group += body
        for name, short, default, help_text in rows:
            option = nodes.paragraph()
            option += nodes.literal(text=f"--{name}")
            if short:
                option += nodes.Text(", ")
                option += nodes.literal(text=f"-{short}")
            default_cell = nodes.literal(text=default) if default else nodes.Text("")
            body += self._row([option, default_cell, nodes.Text(help_text)])
        return table

    @staticmethod
    def _row(cells: list[nodes.Node]) -> nodes.row:
        row = nodes.row()
        for cell in cells:
            entry = nodes.entry()
            if isinstance(cell, nodes.paragraph):
                entry += cell
            else:
                paragraph = nodes.paragraph()
                paragraph += cell
                entry += paragraph
            row += entry
        return row


def msrpc_modules() -> set[str]:
    import msrpc

    found = {"msrpc"}
    for info in pkgutil.walk_packages(msrpc.__path__, "msrpc."):
        if not info.name.rpartition(".")[2].startswith("_"):
            found.add(info.name)
    return found - NOT_API


def check_api_coverage(app: Sphinx, env: BuildEnvironment) -> None:
    documented = set(env.get_domain("py").data.get("modules", {}))
    for name in sorted(msrpc_modules() - documented):
        log.warning(f"module {name} has no API reference: add an automodule for it to a "
                    "page under docs/api/")


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("msrpc-options", OptionsTable)
    app.connect("env-check-consistency", check_api_coverage)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
