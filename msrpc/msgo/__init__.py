"""
msgo's RPC (github.com/mszlu521/msgo, ``rpc/tcp.go``), the Go framework msrpc's wire
header comes from: msrpc clients call Go msgo services, and msrpc servers answer Go
msgo clients, on the same port as native clients.

msgo speaks the same 17-byte header with serializer 0 (gob, see :mod:`msrpc.gob`) and
compression 0 (gzip, always), and one request per connection: ``MsRpcRequest`` in,
``MsRpcResponse`` out (:mod:`msrpc.msgo.messages`).  A client uses this *dialect* for an
instance whose registry metadata says ``dialect=msgo`` (etcd's plain ``service →
host:port`` keys, which only msgo writes, say so by themselves) or for a service it is
told about (``Client(dialect={"goods": "msgo"})``, ``--dialect goods=msgo``); see
:mod:`msrpc.msgo.client`.  Servers answer gob requests through :mod:`msrpc.msgo.server`.
"""

#: The dialect's name, in ``Client(dialect=...)``, ``--dialect`` and instance metadata.
MSGO = "msgo"
#: Instance metadata key naming the dialect an instance speaks (absent: msrpc's own).
DIALECT_KEY = "dialect"
#: The dialects a client can speak: msrpc's own, and msgo's.
DIALECTS = ("msrpc", MSGO)


def parse_dialect_option(spec: str) -> tuple[str, str]:
    """``[SERVICE=]NAME`` (``--dialect``) → (service, or ``*`` for all; dialect name)."""
    service, sep, name = spec.rpartition("=")
    if name not in DIALECTS:
        raise ValueError(f"unknown dialect {name!r}; choose {' or '.join(DIALECTS)}")
    return (service if sep else "*"), name
