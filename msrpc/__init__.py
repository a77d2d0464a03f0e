"""msrpc: Twisted-native RPC with service discovery."""

__version__ = "0.1.0"
