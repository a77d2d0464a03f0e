"""``ServiceInstance``: one address of one service, as every registry backend sees it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

#: Metadata key under which a server lists the methods it declares idempotent
#: (``@expose(idempotent=True)``), comma-separated, so clients may retry them.
IDEMPOTENT_KEY = "idempotent"
#: Metadata key naming the protocol dialect an instance speaks when it is not msrpc's own
#: (``msgo``: a Go msgo server, see ``msrpc.msgo``).
DIALECT_KEY = "dialect"


@dataclass(frozen=True)
class ServiceInstance:
    """
    A live address of a service.  Hashable by identity fields so it can key a pool; the
    metadata takes part in equality (a changed weight or tag is a change) but not in the hash.
    """

    service: str
    host: str
    port: int
    weight: float = 10.0
    metadata: Mapping[str, str] = field(default_factory=dict, hash=False)
    instance_id: str = ""
    namespace: str = ""
    group: str = ""
    cluster: str = ""
    enabled: bool = True
    healthy: bool = True

    def __post_init__(self) -> None:
        if not self.service:
            raise ValueError("ServiceInstance needs a service name")
        if not self.host:
            raise ValueError("ServiceInstance needs a host")
        if not (0 < int(self.port) < 65536):
            raise ValueError(f"ServiceInstance port out of range: {self.port!r}")
        if self.weight < 0:
            raise ValueError(f"ServiceInstance weight must be >= 0, got {self.weight!r}")
        object.__setattr__(self, "port", int(self.port))
        object.__setattr__(self, "weight", float(self.weight))
        object.__setattr__(self, "metadata", dict(self.metadata))
        if not self.instance_id:
            object.__setattr__(self, "instance_id", f"{self.host}:{self.port}")

    @property
    def address(self) -> str:
        """``host:port``, as msgo stored it and as logs show it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def selectable(self) -> bool:
        """Whether a balancer may send calls here (weight 0 or disabled means no)."""
        return self.enabled and self.healthy and self.weight > 0

    def declares_idempotent(self, method: str) -> bool:
        """Whether the server behind this instance says ``method`` is safe to run twice."""
        return method in self.metadata.get(IDEMPOTENT_KEY, "").split(",")

    def with_changes(self, **changes: Any) -> "ServiceInstance":
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "service": self.service, "host": self.host, "port": self.port,
            "weight": self.weight, "metadata": dict(self.metadata),
            "instance_id": self.instance_id, "namespace": self.namespace,
            "group": self.group, "cluster": self.cluster,
            "enabled": self.enabled, "healthy": self.healthy,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ServiceInstance":
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> "ServiceInstance":
        return cls.from_dict(json.loads(text))


def parse_address(address: str) -> tuple[str, int]:
    """``"host:port"`` or ``"[v6]:port"`` → (host, port); msgo's plain registry values."""
    address = address.strip()
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        port = rest.lstrip(":")
    else:
        host, sep, port = address.rpartition(":")
        if not sep:
            raise ValueError(f"not a host:port address: {address!r}")
    if not host or not port.isdigit():
        raise ValueError(f"not a host:port address: {address!r}")
    return host, int(port)
