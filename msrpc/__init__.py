"""msrpc: Twisted-native RPC with service discovery."""

#: The one place the version is written: packaging reads it (pyproject.toml's dynamic
#: version), ``msrpc --version`` and ``twistd msrpc --version`` print it.
__version__ = "0.1.0"


def version_text() -> str:
    """``msrpc 0.1.0 (Twisted 24.3.0, Python 3.11.7)``, for ``--version``."""
    import platform

    from twisted import __version__ as twisted_version

    return (f"msrpc {__version__} (Twisted {twisted_version}, "
            f"Python {platform.python_version()})")
