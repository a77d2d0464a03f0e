"""
The etcd registry's watches of many services on one watcher of one stream
(msrpc.registry.etcd_watch), against the in-memory gateway and a Clock: events are routed
by key, a service watched while the stream runs is listed without losing what happens
meanwhile, and a watch right after a lookup starts from the lookup when it safely can.
"""

from __future__ import annotations

import json
from typing import Any

from msrpc.registry import ServiceInstance
from tests.etcd_fake import b64, delete_event, put_event, watch_line
from tests.test_registry_etcd import EtcdCase


def inst(service: str, port: int) -> ServiceInstance:
    return ServiceInstance(service=service, host="10.0.0.9", port=port)


def key(service: str, port: int) -> str:
    return f"/msrpc/services/{service}/10.0.0.9:{port}"


class HubCase(EtcdCase):
    def setUp(self) -> None:
        super().setUp()
        self.seen: dict[str, list[list[int]]] = {}

    def watch(self, service: str) -> Any:
        seen = self.seen.setdefault(service, [])
        watch = self.registry.watch(service, lambda i: seen.append(sorted(x.port for x in i)))
        self.addCleanup(watch.stop)
        self.router.flush()
        return watch

    def open_streams(self) -> list:
        return [w for w in self.fake.watches if not w.closed]

    def put(self, service: str, port: int, revision: int) -> None:
        self.fake.watches[-1].send(watch_line(
            [put_event(key(service, port), inst(service, port).to_json(), revision)],
            revision))
        self.router.flush()

    def txns(self) -> int:
        return len(self.fake.calls_to("/v3/kv/txn"))


class OneStreamTests(HubCase):
    def test_many_services_share_one_stream_and_one_watcher(self) -> None:
        for i in range(50):
            self.watch(f"s{i}")
        self.assertEqual(len(self.fake.watches), 1)
        [stream] = self.open_streams()
        self.assertEqual(len(stream.bodies), 1)
        self.assertEqual(self.seen, {f"s{i}": [[]] for i in range(50)})

    def test_events_reach_the_service_their_key_belongs_to(self) -> None:
        self.watch("a")
        self.watch("b")
        self.put("b", 7002, 30)
        self.fake.watches[-1].send(watch_line([put_event("a", "127.0.0.1:7100", 31)], 31))
        self.router.flush()
        self.assertEqual(self.seen, {"a": [[], [7100]], "b": [[], [7002]]})

    def test_keys_of_services_nobody_watches_are_dropped(self) -> None:
        self.watch("a")
        self.put("zzz", 7009, 30)
        self.fake.watches[-1].send(watch_line([put_event("/msrpc/services/x", "{}", 31),
                                               put_event("/other/a/b", "x", 32)], 32))
        self.router.flush()
        self.assertEqual(self.seen, {"a": [[]]})

    def test_one_event_message_for_several_services_calls_each_back_once(self) -> None:
        self.watch("a")
        self.watch("b")
        self.fake.watches[-1].send(watch_line(
            [put_event(key("a", 1), inst("a", 1).to_json(), 40),
             put_event(key("a", 2), inst("a", 2).to_json(), 40),
             delete_event(key("b", 9), 40)], 40))
        self.router.flush()
        self.assertEqual(self.seen, {"a": [[], [1, 2]], "b": [[]]})

    def test_stopping_one_service_keeps_the_stream_for_the_others(self) -> None:
        self.watch("a")
        watch_b = self.watch("b")
        watch_b.stop()
        self.router.flush()
        [stream] = self.open_streams()
        self.put("b", 7002, 30)
        self.put("a", 7001, 31)
        self.assertEqual(self.seen, {"a": [[], [7001]], "b": [[]]})

    def test_two_watches_of_one_service_share_it(self) -> None:
        counts: list[int] = []
        self.watch("a")
        self.registry.watch("a", lambda i: counts.append(len(i)))
        self.put("a", 7001, 40)
        self.assertEqual((self.seen["a"], counts), ([[], [7001]], [0, 1]))


class WatchedWhileStreamingTests(HubCase):
    def test_a_new_service_is_listed_and_its_events_meanwhile_are_kept(self) -> None:
        self.watch("a")
        self.router.holding.add("/v3/kv/txn")
        self.watch("b")                       # its list waits
        self.put("b", 7002, 40)               # ... while the stream has news of it
        self.router.holding.clear()
        self.router.release()                 # the list is older: it lacks 7002
        self.router.flush()
        self.assertEqual(self.seen["b"], [[7002]])

    def test_events_the_list_already_holds_are_not_applied_again(self) -> None:
        self.watch("a")
        self.router.holding.add("/v3/kv/txn")
        self.watch("b")
        self.put("b", 7002, 40)
        self.fake.put_raw(key("b", 7002), inst("b", 7002).to_json())  # the list has it
        self.fake.put_raw(key("b", 7003), inst("b", 7003).to_json())  # and a later one
        self.router.holding.clear()
        self.router.release()
        self.router.flush()
        self.assertEqual(self.seen["b"], [[7002, 7003]])
        self.assertEqual(len(self.fake.watches), 1)


class LookupThenWatchTests(HubCase):
    def test_a_watch_after_a_lookup_does_not_list_again(self) -> None:
        self.successResultOf(self.registry.register(inst("a", 7001)))
        listed = self.fake.revision
        self.successResultOf(self.registry.lookup("a"))
        reads = self.txns()
        self.watch("a")
        self.assertEqual(self.txns(), reads)
        self.assertEqual(self.fake.watches[-1].start_revision, listed + 1)
        self.assertEqual(self.seen["a"], [[7001]])

    def test_an_old_lookup_is_not_used(self) -> None:
        self.successResultOf(self.registry.lookup("a"))
        self.clock.advance(60)
        reads = self.txns()
        self.watch("a")
        self.assertEqual(self.txns(), reads + 1)

    def test_a_lookup_older_than_the_stream_is_not_used(self) -> None:
        self.successResultOf(self.registry.lookup("b"))  # at revision r
        self.watch("a")
        self.put("zzz", 1, self.fake.revision + 5)        # the stream has moved past r
        reads = self.txns()
        self.watch("b")
        self.assertEqual(self.txns(), reads + 1)

    def test_a_change_between_lookup_and_watch_is_not_missed(self) -> None:
        self.successResultOf(self.registry.lookup("a"))
        listed = self.fake.revision
        self.successResultOf(self.registry.register(inst("a", 7001)))  # after the lookup
        self.watch("a")
        self.assertEqual(self.fake.watches[-1].start_revision, listed + 1)
        self.put("a", 7001, listed + 2)  # etcd replays it from there
        self.assertEqual(self.seen["a"], [[], [7001]])


class PermissionTests(HubCase):
    def test_a_denied_whole_keyspace_watch_falls_back_to_our_prefix(self) -> None:
        self.watch("a")
        stream = self.fake.watches[-1]
        stream.send(stream.line({"created": True, "canceled": True, "cancel_reason":
                                 "rpc error: code = PermissionDenied desc = etcdserver: "
                                 "permission denied"}, 3))
        self.router.flush()
        self.clock.advance(1.0)
        self.router.flush()
        create = self.fake.watches[-1].bodies[0]["create_request"]
        self.assertEqual(create["key"], b64("/msrpc/services/"))


class EventsTests(HubCase):
    def test_a_broken_stream_is_one_error_and_a_reconnect_of_each_watch(self) -> None:
        reported: list[tuple[str, ...]] = []

        class Recorder:
            def registry_error(self, backend: str, operation: str, error: Any) -> None:
                reported.append(("error", backend, operation))

            def watch_reconnected(self, backend: str, service: str) -> None:
                reported.append(("reconnected", backend, service))

        self.registry.events.subscribe(Recorder())
        self.watch("a")
        self.watch("b")
        stream = self.fake.watches[-1]
        stream.send(stream.line({"created": True}, 1))
        stream.send(b'{"error":{"grpc_code":14,"http_code":503,"message":"EOF",'
                    b'"http_status":"Service Unavailable"}}\n')
        self.router.flush()
        self.clock.advance(1.0)
        self.router.flush()
        self.fake.watches[-1].send(stream.line({"created": True}, 1))
        self.router.flush()
        self.assertEqual(reported, [("error", "etcd", "watch"), ("reconnected", "etcd", "a"),
                                    ("reconnected", "etcd", "b")])


class CloseTests(HubCase):
    def test_close_closes_the_stream_and_leaves_no_timer(self) -> None:
        for name in ("a", "b", "c"):
            self.watch(name)
        self.successResultOf(self.registry.close())
        self.router.flush()
        self.assertEqual(self.open_streams(), [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stopping_every_watch_closes_the_stream(self) -> None:
        a, b = self.watch("a"), self.watch("b")
        a.stop()
        b.stop()
        self.router.flush()
        self.assertEqual(self.open_streams(), [])
        self.assertEqual(json.loads(json.dumps(self.clock.getDelayedCalls())), [])
