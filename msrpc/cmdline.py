"""
Command lines as people type them: options anywhere, as git, etcdctl and grpcurl accept.

Twisted's ``usage.Options`` parses with ``getopt``, which stops at the first argument, so
``msrpc call arith.add 1 2 --registry etcd`` would send ``--registry`` and ``etcd`` as call
arguments.  ``InterspersedOptions`` first sorts the line into options and arguments (GNU
style), then hands ``usage.Options`` the options followed by ``--`` and the arguments:

- options may come before, between or after arguments; ``--`` ends the options;
- ``--name=value``, ``--name value``, ``-n value``, ``-nvalue``, unique prefixes of long
  names (as getopt allows);
- a word that looks like an option but is not one is a usage error, never an argument;
- negative numbers (``-1``, ``-2.5``) are arguments, since no option is a digit.
"""

from __future__ import annotations

import re
import sys
from typing import Mapping, Optional, Sequence

from twisted.python import usage

from msrpc import version_text

_NUMBER = re.compile(r"-(\d|\.\d)")


class HelpRequested(Exception):
    """``--help`` was given: the text to print (instead of ``usage.Options`` exiting)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


def option_table(options: usage.Options) -> dict[str, bool]:
    """``--name``/``-n`` → whether it takes a value, from an Options' getopt spec."""
    table = {"--" + spec.rstrip("="): spec.endswith("=") for spec in options.longOpt}
    short = options.shortOpt
    for index, char in enumerate(short):
        if char != ":":
            table["-" + char] = short[index + 1:index + 2] == ":"
    return table


def _long_name(given: str, table: Mapping[str, bool]) -> str:
    if given in table:
        return given
    matches = [name for name in table if name.startswith(given) and name.startswith("--")]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise usage.UsageError(f"option {given} is ambiguous: "
                               f"{', '.join(sorted(matches))}")
    raise usage.UsageError(f"unknown option {given} (an argument that starts with '-' "
                           "goes after '--')")


def split_argv(argv: Sequence[str], table: Mapping[str, bool],
               stop_at_argument: bool = False) -> tuple[list[str], list[str]]:
    """
    ``argv`` → (options, arguments).  Options come back normalised: ``--full-name=value``
    or ``-n value`` or ``-f``.  With ``stop_at_argument`` the first argument and everything
    after it are returned untouched as the arguments.
    """
    options: list[str] = []
    arguments: list[str] = []
    index = 0
    while index < len(argv):
        token = argv[index]
        if token == "--":
            return options, arguments + list(argv[index + 1:])
        if token.startswith("--"):
            given, eq, value = token.partition("=")
            name = _long_name(given, table)
            if table[name]:
                if not eq:
                    index += 1
                    if index >= len(argv):
                        raise usage.UsageError(f"option {name} needs a value")
                    value = argv[index]
                options.append(f"{name}={value}")
            elif eq:
                raise usage.UsageError(f"option {name} takes no value")
            else:
                options.append(name)
        elif token.startswith("-") and token != "-" and not _NUMBER.match(token):
            position = 1
            while position < len(token):
                flag = "-" + token[position]
                if flag not in table:
                    raise usage.UsageError(f"unknown option {flag} (an argument that starts "
                                           "with '-' goes after '--')")
                if table[flag]:
                    value = token[position + 1:]
                    if not value:
                        index += 1
                        if index >= len(argv):
                            raise usage.UsageError(f"option {flag} needs a value")
                        value = argv[index]
                    options.extend([flag, value])
                    break
                options.append(flag)
                position += 1
        else:
            if stop_at_argument:
                return options, list(argv[index:])
            arguments.append(token)
        index += 1
    return options, arguments


class InterspersedOptions(usage.Options):
    """``usage.Options`` that accepts options anywhere on the line (see the module)."""

    def parseOptions(self, options: Optional[Sequence[str]] = None) -> None:
        argv = sys.argv[1:] if options is None else list(options)
        found, arguments = split_argv(argv, option_table(self))
        super().parseOptions(found + ["--"] + arguments)

    def opt_help(self) -> None:
        """Display this help and exit."""
        raise HelpRequested(str(self))

    opt_h = opt_help

    def opt_version(self) -> None:
        """Print msrpc's version and exit (usage.Options would print Twisted's)."""
        raise HelpRequested(version_text())
