"""
Every watch of one etcd registry on one watcher of one watch stream.

A client watching a thousand services holds one streaming HTTP connection, not a thousand.
The one watcher covers our key prefix, or, when msgo's plain keys (``<service>`` →
``host:port``, at the root of the keyspace) are readable, the whole keyspace: events are
routed by key to the services watched, and other keys are dropped.  (One watcher per stream
because etcd's JSON gateway reads a request body only until it starts answering: the
create requests after the first few of a body are lost; measured on 3.4 and 3.5.)

The stream resumes after the last revision it delivered.  A service watched while it runs
is listed after it has been noted, so events for it that arrive meanwhile are kept and the
ones its list already holds (revision at most the list's) are skipped; a lookup made before
the service was watched stands in for that list if the stream has not moved past it.  A
stream that fell behind a compaction lists every service again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional

from twisted.internet import defer, task
from twisted.logger import Logger

from msrpc.registry.etcd_api import (
    EtcdAuthError, LineStream, b64, header_revision, prefix_end, unb64, unwrap,
)
from msrpc.registry.instance import ServiceInstance
from msrpc.registry.interface import IWatch, WatchCallback
from msrpc.registry.polling import snapshot_key
from msrpc.registry.registration import CallbackWatch

if TYPE_CHECKING:
    from msrpc.registry.etcd import EtcdRegistry

#: What a list of one service gives: (revision, {key: instance}, plain key readable).
Listing = tuple[int, dict[bytes, ServiceInstance], bool]
Backoff = Callable[[int], float]
#: The whole keyspace, as an etcd range (``key`` and ``range_end`` both NUL).
EVERYTHING = b"\0"


class _Compacted(Exception):
    """The stream's start revision was compacted away: every service must be listed again."""


class _Canceled(Exception):
    """etcd canceled the watcher for another reason (auth): a new stream, a fresh token."""


class _Service:
    """One watched service: its instances by key, the revision they are at, its watchers."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.kvs: dict[bytes, ServiceInstance] = {}
        #: The revision it was listed at: events up to it are in kvs, later ones are
        #: applied; None: being listed (events are held meanwhile).
        self.revision: Optional[int] = None
        self.held: list[tuple[int, dict[str, Any]]] = []
        self.callbacks: list[WatchCallback] = []
        self.last: Optional[tuple] = None

    def instances(self) -> list[ServiceInstance]:
        return sorted(self.kvs.values(), key=lambda i: (i.instance_id, i.address))


class WatchHub:
    """The watches of one ``EtcdRegistry``, all on one stream (see the module's doc)."""

    log = Logger()

    def __init__(self, registry: "EtcdRegistry", backoff: Backoff) -> None:
        self._registry = registry
        self._gateway = registry.gateway
        self._clock = registry.clock
        self._backoff = backoff
        self._prefix = (registry.prefix + "/").encode()
        self._services: dict[str, _Service] = {}
        #: The stream has delivered everything up to this revision (None: no stream yet).
        self._revision: Optional[int] = None
        self._everything = True   # watch the whole keyspace (msgo's plain keys too)
        self._token: Optional[str] = None  # the one the current stream was opened with
        self._created = False
        self._streamed = False  # a stream was created before the current one
        self._task: Optional[defer.Deferred[None]] = None
        self._failing = False
        #: Streams opened (for tests and benchmarks).
        self.streams = 0

    # ------------------------------------------------------------------ watches

    def watch(self, service: str, callback: WatchCallback,
              listing: Optional[Listing] = None) -> IWatch:
        """
        Watch ``service``; ``listing`` (a lookup made just before) spares listing it again
        if the stream has not gone past its revision.
        """
        entry = self._services.get(service)
        if entry is None:
            entry = self._services[service] = _Service(service)
            usable = listing is not None and (self._revision is None
                                             or listing[0] >= self._revision)
            if usable:
                assert listing is not None
                self._take(entry, listing)
            if self._task is None:
                self._start()  # which lists what needs it first
            elif not usable:
                self._list_later(entry)  # the stream holds its events meanwhile
        entry.callbacks.append(callback)
        if entry.revision is not None:
            if entry.last is None:
                self._notify(entry)
            else:
                self._call(entry, callback, entry.instances())
        return CallbackWatch(lambda: self._unwatch(entry, callback))

    def _unwatch(self, entry: _Service, callback: WatchCallback) -> None:
        if callback in entry.callbacks:
            entry.callbacks.remove(callback)
        if entry.callbacks or self._services.get(entry.name) is not entry:
            return
        del self._services[entry.name]
        if not self._services:
            self.stop()

    def stop(self) -> None:
        """No more callbacks; the stream is closed."""
        self._services.clear()
        self._revision = None
        self._streamed = False
        task_, self._task = self._task, None
        if task_ is not None:
            task_.cancel()

    # ------------------------------------------------------------------ listing

    def _take(self, entry: _Service, listing: Listing) -> None:
        revision, kvs, plain = listing
        entry.kvs = dict(kvs)
        entry.revision = revision
        if not plain:
            self._everything = False
        held, entry.held = entry.held, []
        for event_revision, event in held:
            if event_revision > revision:
                self._apply(entry, event)

    def _list_later(self, entry: _Service, attempt: int = 0) -> None:
        """List a service watched while the stream runs (again, with backoff, if that fails)."""
        d = defer.Deferred.fromCoroutine(self._registry._read(entry.name))

        def listed(listing: Listing) -> None:
            if self._services.get(entry.name) is entry and entry.revision is None:
                self._take(entry, listing)
                self._notify(entry)

        def failed(failure: Any) -> None:
            if self._services.get(entry.name) is not entry or entry.revision is not None:
                return
            self._outage(failure.value)
            self._clock.callLater(self._backoff(attempt), self._relist, entry, attempt + 1)

        d.addCallbacks(listed, failed)

    def _relist(self, entry: _Service, attempt: int) -> None:
        if self._services.get(entry.name) is entry and entry.revision is None:
            self._list_later(entry, attempt)

    async def _list_missing(self) -> None:
        """List every service that has no revision yet (new, or after a compaction)."""
        todo = [s for s in self._services.values() if s.revision is None]
        if not todo:
            return
        listings = await defer.gatherResults(
            [defer.Deferred.fromCoroutine(self._registry._read(s.name)) for s in todo],
            consumeErrors=True).addErrback(_first_error)
        for entry, listing in zip(todo, listings):
            if self._services.get(entry.name) is entry:
                self._take(entry, listing)
                self._notify(entry)

    # ------------------------------------------------------------------ the stream

    def _start(self) -> None:
        if self._task is None:
            self._task = defer.Deferred.fromCoroutine(self._run())
            self._task.addErrback(self._died)

    def _died(self, failure: Any) -> None:
        if not failure.check(defer.CancelledError):
            self.log.failure("the etcd watch stream died", failure)

    async def _run(self) -> None:
        failures = 0
        while self._services:
            self._created = False
            error: Optional[BaseException] = None
            try:
                if self._revision is None:
                    await self._list_missing()
                    if not self._services:
                        return
                    self._revision = min(s.revision for s in self._services.values()
                                         if s.revision is not None)
                else:
                    await self._list_missing()
                await self._stream()
            except _Compacted:
                self._revision = None
                for entry in self._services.values():
                    entry.revision, entry.held = None, []
                continue
            except defer.CancelledError:
                raise
            except Exception as e:
                error = e
            if self._created:
                failures = 0
            if error is None:
                self.log.info("etcd watch stream ended; resuming after revision {revision}",
                              revision=self._revision)
            else:
                self._outage(error)
                if isinstance(error, (_Canceled, EtcdAuthError)):
                    await self._gateway.refresh_token(stale=self._token)
            await task.deferLater(self._clock, self._backoff(failures), lambda: None)
            failures += 1

    async def _stream(self) -> None:
        """The stream, from the revision after the last delivered, until it ends or fails."""
        assert self._revision is not None
        start, end = (EVERYTHING, EVERYTHING) if self._everything \
            else (self._prefix, prefix_end(self._prefix))
        request = {"create_request": {"key": b64(start), "range_end": b64(end),
                                      "progress_notify": True,
                                      "start_revision": str(self._revision + 1)}}
        self.streams += 1
        response, self._token = await self._gateway.open_stream("/v3/watch", [request])
        stream = LineStream(self._on_line)
        response.deliverBody(stream)
        await stream.finished

    def _on_line(self, line: dict[str, Any]) -> None:
        result = unwrap(line)
        if result.get("canceled"):
            if int(result.get("compact_revision", 0)) > 0:
                self.log.info("etcd watch fell behind a compaction; listing {n} service(s) "
                              "again", n=len(self._services))
                raise _Compacted(result["compact_revision"])
            reason = str(result.get("cancel_reason") or "watch canceled by etcd")
            if self._everything and "permission denied" in reason:
                self.log.info("this etcd user may not watch msgo's plain keys: watching "
                              "{prefix} only", prefix=self._prefix.decode())
                self._everything = False
            raise _Canceled(reason)
        if result.get("created"):
            if not self._created:
                self._created = True
                self._recovered()
                if self._streamed:  # each watch works again
                    for name in list(self._services):
                        self._registry.events.watch_reconnected(name)
                self._streamed = True
            return
        events = result.get("events")
        if not events:  # a progress notification: complete up to here
            self._advance(header_revision(result))
            return
        changed: dict[str, _Service] = {}
        for event in events:
            revision = int(event["kv"].get("mod_revision", 0))
            entry = self._service_of(unb64(event["kv"]["key"]))
            if entry is not None:
                if entry.revision is None:
                    entry.held.append((revision, event))
                elif revision > entry.revision:
                    self._apply(entry, event)
                    changed[entry.name] = entry
            self._advance(revision)
        for entry in changed.values():
            self._notify(entry)

    def _service_of(self, key: bytes) -> Optional[_Service]:
        """The watched service a key belongs to, if any."""
        if key.startswith(self._prefix):
            name, sep, _ = key[len(self._prefix):].partition(b"/")
            if not sep:
                return None
        else:
            name = key
        return self._services.get(name.decode("utf-8", "replace"))

    def _apply(self, entry: _Service, event: dict[str, Any]) -> None:
        kv = event["kv"]
        key = unb64(kv["key"])
        if event.get("type") == "DELETE":
            entry.kvs.pop(key, None)
        else:
            instance = self._registry._decode(entry.name, key, kv.get("value", ""))
            if instance is not None:
                entry.kvs[key] = instance
            else:
                entry.kvs.pop(key, None)

    def _advance(self, revision: int) -> None:
        if self._revision is not None and revision > self._revision:
            self._revision = revision

    # ------------------------------------------------------------------ telling

    def _notify(self, entry: _Service) -> None:
        instances = entry.instances()
        key = snapshot_key(instances)
        if key == entry.last:
            return
        entry.last = key
        for callback in list(entry.callbacks):
            self._call(entry, callback, instances)

    def _call(self, entry: _Service, callback: WatchCallback,
              instances: list[ServiceInstance]) -> None:
        if callback not in entry.callbacks:
            return
        try:
            callback(list(instances))
        except Exception:
            self.log.failure("watch callback for {service} raised", service=entry.name)

    def _outage(self, error: BaseException) -> None:
        self._registry.events.error("watch", error)
        if not self._failing:
            self._failing = True
            self.log.warn("etcd watch of {n} service(s) interrupted, retrying: {error}",
                          n=len(self._services), error=error)

    def _recovered(self) -> None:
        if self._failing:
            self._failing = False
            self.log.info("etcd watch of {n} service(s) is back", n=len(self._services))


def _first_error(failure: Any) -> Any:
    """``gatherResults`` wraps the failure that stopped it; give back the original."""
    failure.trap(defer.FirstError)
    return failure.value.subFailure


__all__ = ["WatchHub", "Listing"]
