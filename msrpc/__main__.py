"""``python -m msrpc``: the ``msrpc`` command."""

from msrpc.cli import main

main()
