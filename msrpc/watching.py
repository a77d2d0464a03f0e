"""
Instance-list changes as ``msrpc watch`` shows them: what was added, removed or changed
(weight, metadata, enabled, healthy) between two lists a registry's watch delivered.
"""

from __future__ import annotations

import datetime as dt
from functools import partial
from typing import Any, Iterable, Optional, Sequence

from twisted.internet.defer import Deferred

from msrpc.registry.instance import ServiceInstance
from msrpc.registry.interface import IRegistry

ADDED, REMOVED, CHANGED = "added", "removed", "changed"
_COMPARED = ("weight", "metadata", "enabled", "healthy", "host", "port")

Change = tuple[str, ServiceInstance, Optional[ServiceInstance]]


def diff(before: Iterable[ServiceInstance], after: Iterable[ServiceInstance]) -> list[Change]:
    """Changes from ``before`` to ``after``, instances matched by their id: ``(ADDED, new,
    None)``, ``(REMOVED, old, None)``, ``(CHANGED, new, old)``; in id order."""
    old = {i.instance_id: i for i in before}
    new = {i.instance_id: i for i in after}
    changes: list[Change] = []
    for key in sorted(old.keys() | new.keys()):
        was, now = old.get(key), new.get(key)
        if was is None and now is not None:
            changes.append((ADDED, now, None))
        elif now is None and was is not None:
            changes.append((REMOVED, was, None))
        elif was is not None and now is not None and any(
                getattr(was, f) != getattr(now, f) for f in _COMPARED):
            changes.append((CHANGED, now, was))
    return changes


def describe(instance: ServiceInstance, old: Optional[ServiceInstance] = None) -> str:
    """``weight=10 id=... k=v`` (``weight=10->5`` and so on for what changed)."""

    def field(name: str, now: Any, was: Any) -> str:
        return f"{name}={now}" if old is None or now == was else f"{name}={was}->{now}"

    parts = [field("weight", f"{instance.weight:g}", old and f"{old.weight:g}"),
             f"id={instance.instance_id}"]
    if old is not None and old.address != instance.address:
        parts.append(f"address={old.address}->{instance.address}")
    for flag in ("enabled", "healthy"):
        now = getattr(instance, flag)
        if not now or (old is not None and getattr(old, flag) != now):
            parts.append(field(flag, now, old and getattr(old, flag)))
    before = dict(old.metadata) if old is not None else {}
    for key in sorted(instance.metadata.keys() | before.keys()):
        if key not in instance.metadata:
            parts.append(f"{key}={before[key]}->(none)")
        else:
            parts.append(field(key, instance.metadata[key], before.get(key, "(none)")))
    return " ".join(parts)


def timestamp(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")


async def watch_services(clock: Any, registry: IRegistry, services: Sequence[str], out: Any,
                         until: "Deferred[Any]") -> None:
    """Write a line per change of each service's instances until ``until`` fires.  The
    first lines are the instances there when the watch starts (``added``)."""
    known: dict[str, list[ServiceInstance]] = {s: [] for s in services}

    def changed(service: str, instances: Sequence[ServiceInstance]) -> None:
        for kind, instance, old in diff(known[service], instances):
            out.write(f"{timestamp(clock.seconds())}\t{service}\t{kind}\t{instance.address}"
                      f"\t{describe(instance, old)}\n")
        known[service] = list(instances)
        flush = getattr(out, "flush", None)
        if flush is not None:
            flush()

    watches = [registry.watch(service, partial(changed, service)) for service in services]
    try:
        await until
    finally:
        for watch in watches:
            watch.stop()


__all__ = ["diff", "describe", "watch_services", "ADDED", "REMOVED", "CHANGED"]
