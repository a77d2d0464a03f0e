"""
Unit tests of the etcd registry against an in-memory gateway (``tests/etcd_fake.py``) and a
``Clock``: deterministic, no network, no sleeping.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any, Sequence

from hypothesis import given, settings, strategies as st
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python import usage
from twisted.trial.unittest import TestCase
from twisted.web.client import ResponseDone
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from msrpc.errors import RegistryAuthError, RegistryError, RegistryUnavailable
from msrpc.registry import IRegistration, IRegistry, IServiceCatalog, IWatch, ServiceInstance
from msrpc.registry.etcd import EtcdRegistry, OPTIONS, from_options
from msrpc.registry.etcd_api import LineStream, prefix_end
from msrpc.registry import etcd as etcd_module
from msrpc.registry.options import backend_module
from tests.etcd_fake import FakeEtcd, Router, b64, delete_event, put_event, watch_line

E1, E2, E3 = "http://e1:2379", "http://e2:2379", "http://e3:2379"
ARITH = ServiceInstance(service="arith", host="10.0.0.5", port=9112, weight=5,
                        metadata={"zone": "a"})
KEY = "/msrpc/services/arith/10.0.0.5:9112"


class EtcdCase(TestCase):
    """A registry on a fake etcd behind a router, driven by a Clock."""

    endpoints: Sequence[str] = (E1,)

    def setUp(self) -> None:
        self.fake = FakeEtcd()
        self.router = Router(self.fake)
        self.clock = Clock()
        self.registry = self.make_registry()

    def make_registry(self, **kwargs: Any) -> EtcdRegistry:
        kwargs.setdefault("ttl", 9.0)
        return EtcdRegistry(self.clock, list(self.endpoints), http=self.router,
                            backoff=lambda attempt: 1.0, **kwargs)

    def register(self, instance: ServiceInstance = ARITH) -> Any:
        return self.successResultOf(self.registry.register(instance))

    def keepalives(self) -> int:
        return len(self.fake.calls_to("/v3/lease/keepalive"))


# --------------------------------------------------------------------------- contract


class ContractTests(EtcdCase):
    def test_registry_provides_IRegistry(self) -> None:
        self.assertTrue(verifyObject(IRegistry, self.registry))

    def test_registration_provides_IRegistration(self) -> None:
        self.assertTrue(verifyObject(IRegistration, self.register()))

    def test_watch_provides_IWatch(self) -> None:
        watch = self.registry.watch("arith", lambda instances: None)
        self.addCleanup(watch.stop)
        self.assertTrue(verifyObject(IWatch, watch))

    def test_service_name_with_slash_is_refused(self) -> None:
        self.assertRaises(ValueError, self.registry.watch, "a/b", lambda i: None)

    def test_registering_a_service_name_with_slash_fails_the_deferred(self) -> None:
        instance = ServiceInstance(service="a/b", host="h", port=1)
        self.failureResultOf(self.registry.register(instance), ValueError)


class EncodingTests(TestCase):
    def test_prefix_end_increments_the_last_byte(self) -> None:
        self.assertEqual(prefix_end(b"/msrpc/services/echo/"), b"/msrpc/services/echo0")

    def test_prefix_end_skips_trailing_ff_bytes(self) -> None:
        self.assertEqual(prefix_end(b"a\xff\xff"), b"b")

    def test_prefix_end_of_all_ff_is_every_key(self) -> None:
        self.assertEqual(prefix_end(b"\xff"), b"\0")


# --------------------------------------------------------------------------- register


class RegisterTests(EtcdCase):
    def test_register_puts_instance_json_under_service_prefix(self) -> None:
        self.register()
        self.assertEqual(ServiceInstance.from_json(self.fake.value(KEY)), ARITH)

    def test_register_binds_key_to_a_lease_with_the_ttl(self) -> None:
        self.register()
        lease = self.fake.lease_of(KEY)
        self.assertEqual(self.fake.leases[lease], 9)

    def test_default_ttl_is_ten_seconds(self) -> None:
        registry = EtcdRegistry(self.clock, E1, http=self.router)
        self.successResultOf(registry.register(ARITH))
        self.assertEqual(self.fake.calls_to("/v3/lease/grant")[0].body["TTL"], 10)

    def test_key_prefix_is_configurable(self) -> None:
        registry = self.make_registry(prefix="/apps/rpc/")
        self.successResultOf(registry.register(ARITH))
        self.assertIsNotNone(self.fake.value("/apps/rpc/arith/10.0.0.5:9112"))

    def test_lease_id_is_sent_back_as_a_string(self) -> None:
        self.register()
        put = self.fake.calls_to("/v3/kv/put")[0].body
        self.assertIsInstance(put["lease"], str)

    def test_keepalive_runs_every_third_of_the_ttl(self) -> None:
        self.register()
        self.clock.advance(2.9)
        self.assertEqual(self.keepalives(), 0)
        self.clock.advance(0.1)
        self.assertEqual(self.keepalives(), 1)
        self.clock.advance(3.0)
        self.assertEqual(self.keepalives(), 2)

    def test_keepalive_refreshes_the_registered_lease(self) -> None:
        self.register()
        self.clock.advance(3.0)
        self.assertEqual(str(self.fake.calls_to("/v3/lease/keepalive")[0].body["ID"]),
                         self.fake.lease_of(KEY))

    def test_lost_lease_is_regranted_and_key_put_again(self) -> None:
        self.register()
        old = self.fake.lease_of(KEY)
        self.fake.expire(old)
        self.clock.advance(3.0)
        new = self.fake.lease_of(KEY)
        self.assertNotIn(new, (None, old))
        self.assertEqual(ServiceInstance.from_json(self.fake.value(KEY)), ARITH)

    def test_registration_comes_back_after_etcd_lost_all_data(self) -> None:
        self.register()
        self.fake.wipe()
        self.clock.advance(3.0)
        self.assertIsNotNone(self.fake.value(KEY))

    def test_put_with_unknown_lease_grants_a_new_one(self) -> None:
        self.fake.fail_next("/v3/kv/put", 404, "etcdserver: requested lease not found", 5)
        self.register()
        self.assertEqual(len(self.fake.calls_to("/v3/lease/grant")), 2)
        self.assertIsNotNone(self.fake.value(KEY))

    def test_keepalive_retries_on_schedule_while_etcd_is_unreachable(self) -> None:
        self.register()
        self.router.down.add(E1)
        self.clock.pump([3.0] * 3)
        self.assertEqual(self.router.tried.count(E1) - 2, 3)  # 2 = grant + put
        self.router.down.clear()
        self.clock.advance(3.0)
        self.assertEqual(self.keepalives(), 1)

    def test_registration_is_restored_when_etcd_returns_empty(self) -> None:
        self.register()
        self.router.down.add(E1)
        self.clock.pump([3.0] * 4)
        self.fake.wipe()
        self.router.down.clear()
        self.clock.advance(3.0)
        self.assertIsNotNone(self.fake.value(KEY))

    def test_deregister_revokes_the_lease_and_the_key_goes(self) -> None:
        registration = self.register()
        self.successResultOf(registration.deregister())
        self.assertEqual(len(self.fake.calls_to("/v3/lease/revoke")), 1)
        self.assertIsNone(self.fake.value(KEY))

    def test_deregister_stops_keepalives(self) -> None:
        self.successResultOf(self.register().deregister())
        self.clock.advance(30)
        self.assertEqual(self.keepalives(), 0)

    def test_deregister_of_an_already_expired_lease_succeeds(self) -> None:
        registration = self.register()
        self.fake.expire(self.fake.lease_of(KEY))
        self.successResultOf(registration.deregister())

    def test_close_deregisters_everything(self) -> None:
        self.register()
        self.register(ARITH.with_changes(port=9113, instance_id=""))
        self.successResultOf(self.registry.close())
        self.assertEqual(self.fake.kv, {})
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_half_done_reregistration_is_completed_on_the_next_beat(self) -> None:
        self.register()
        self.fake.expire(self.fake.lease_of(KEY))
        self.fake.fail_next("/v3/kv/put", 503, "etcdserver: request timed out", 14)
        self.clock.advance(3.0)               # new lease granted, but the put failed
        self.assertIsNone(self.fake.value(KEY))
        self.clock.advance(3.0)
        self.assertIsNotNone(self.fake.value(KEY))

    def test_fractional_ttl_is_rounded_up_to_whole_seconds(self) -> None:
        self.successResultOf(self.make_registry(ttl=2.5).register(ARITH))
        self.assertEqual(self.fake.calls_to("/v3/lease/grant")[0].body["TTL"], 3)

    def test_registration_finishing_after_close_revokes_its_lease(self) -> None:
        self.register()
        self.router.holding = {"/v3/kv/put"}
        d = self.registry.register(ARITH.with_changes(port=9113, instance_id=""))
        self.router.holding = {"/v3/lease/revoke"}  # close() is busy revoking the first
        closed = self.registry.close()
        self.router.holding.clear()
        self.router.release()                       # the late put lands, then that revoke
        self.failureResultOf(d, RegistryError)
        self.successResultOf(closed)
        self.assertEqual((self.fake.kv, self.fake.leases), ({}, {}))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_close_cancels_a_registration_in_flight(self) -> None:
        self.router.holding = {"/v3/kv/put"}
        d = self.registry.register(ARITH)
        self.successResultOf(self.registry.close())
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_register_after_close_is_refused(self) -> None:
        self.successResultOf(self.registry.close())
        self.failureResultOf(self.registry.register(ARITH), RegistryError)

    def test_first_registration_failure_reaches_the_caller(self) -> None:
        self.router.down.add(E1)
        self.failureResultOf(self.registry.register(ARITH), RegistryUnavailable)


# --------------------------------------------------------------------------- errors


class ErrorTests(EtcdCase):
    def test_etcd_error_carries_message_and_status(self) -> None:
        self.fake.fail_next("/v3/kv/txn", 400,
                            "etcdserver: mvcc: required revision has been compacted", 11)
        error = self.failureResultOf(self.registry.lookup("arith"), RegistryError).value
        self.assertEqual((error.status, error.message),
                         (400, "etcdserver: mvcc: required revision has been compacted"))

    def test_unreachable_etcd_is_registry_unavailable(self) -> None:
        self.router.down.add(E1)
        self.failureResultOf(self.registry.lookup("arith"), RegistryUnavailable)

    def test_auth_required_without_credentials_is_auth_error(self) -> None:
        self.fake.users["msrpc"] = "pw"
        failure = self.failureResultOf(self.registry.lookup("arith"), RegistryAuthError)
        self.assertIn("user name is empty", failure.value.message)


class FailoverTests(EtcdCase):
    endpoints = (E1, E2, E3)

    def test_refused_endpoint_fails_over_to_the_next(self) -> None:
        self.router.down.add(E1)
        self.register()
        self.assertEqual(self.router.tried[:2], [E1, E2])

    def test_endpoint_that_worked_is_tried_first_afterwards(self) -> None:
        self.router.down.add(E1)
        self.register()
        self.router.down.clear()
        self.router.tried.clear()
        self.successResultOf(self.registry.lookup("arith"))
        self.assertEqual(set(self.router.tried), {E2})

    def test_endpoints_are_tried_in_order_and_wrap_around(self) -> None:
        self.router.down.add(E1)
        self.register()                       # now preferring E2
        self.router.down.update({E2, E3})
        self.router.down.discard(E1)
        self.router.tried.clear()
        self.successResultOf(self.registry.lookup("arith"))
        self.assertEqual(self.router.tried[:3], [E2, E3, E1])

    def test_hung_endpoint_times_out_and_fails_over(self) -> None:
        registry = self.make_registry(timeout=2.0)
        self.router.hung.add(E1)
        d = registry.lookup("arith")
        self.assertNoResult(d)
        self.clock.advance(2.0)
        self.assertEqual(self.successResultOf(d), [])
        self.assertEqual(self.router.tried, [E1, E2])  # both layouts in one transaction

    def test_cancelled_request_does_not_fail_over(self) -> None:
        self.router.hung.add(E1)
        d = self.registry.lookup("arith")
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(self.router.tried, [E1])

    def test_close_cancels_lookups_in_flight(self) -> None:
        self.router.hung.add(E1)
        d = self.registry.lookup("arith")
        self.successResultOf(self.registry.close())
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_member_without_leader_503_fails_over(self) -> None:
        self.fake.fail_next("/v3/kv/txn", 503, "etcdserver: request timed out", 14)
        self.assertEqual(self.successResultOf(self.registry.lookup("arith")), [])
        self.assertEqual(self.router.tried[:2], [E1, E2])

    def test_all_endpoints_down_is_registry_unavailable(self) -> None:
        self.router.down.update({E1, E2, E3})
        failure = self.failureResultOf(self.registry.lookup("arith"), RegistryUnavailable)
        for url in (E1, E2, E3):
            self.assertIn(url, failure.value.message)


# --------------------------------------------------------------------------- auth


class AuthTests(EtcdCase):
    def setUp(self) -> None:
        super().setUp()
        self.fake.users["msrpc"] = "s3cret-pw"
        self.registry = self.make_registry(user="msrpc", password="s3cret-pw")

    def test_token_is_sent_raw_in_authorization(self) -> None:
        self.successResultOf(self.registry.lookup("arith"))
        token = self.fake.calls_to("/v3/kv/txn")[0].token
        self.assertIn(token, self.fake.tokens)

    def test_authenticates_once_for_many_requests(self) -> None:
        self.successResultOf(self.registry.lookup("arith"))
        self.successResultOf(self.registry.lookup("arith"))
        self.assertEqual(len(self.fake.calls_to("/v3/auth/authenticate")), 1)

    def test_token_renewed_meanwhile_by_another_request_is_not_renewed_again(self) -> None:
        gateway = self.registry.gateway
        self.successResultOf(defer.Deferred.fromCoroutine(gateway.token()))
        self.successResultOf(defer.Deferred.fromCoroutine(
            gateway.refresh_token(stale="an-older-token")))
        self.assertEqual(len(self.fake.calls_to("/v3/auth/authenticate")), 1)

    def test_expired_token_is_renewed_and_request_retried(self) -> None:
        self.successResultOf(self.registry.lookup("arith"))
        self.fake.tokens.clear()              # the server forgot it (5 min idle)
        self.successResultOf(self.registry.lookup("arith"))
        self.assertEqual(len(self.fake.calls_to("/v3/auth/authenticate")), 2)
        self.assertIn(self.fake.calls_to("/v3/kv/txn")[-1].token, self.fake.tokens)

    def test_token_rejected_twice_is_auth_error(self) -> None:
        self.successResultOf(self.registry.lookup("arith"))
        for _ in range(4):
            self.fake.fail_next("/v3/kv/txn", 401, "etcdserver: invalid auth token", 16)
        self.failureResultOf(self.registry.lookup("arith"), RegistryAuthError)

    def test_wrong_password_is_auth_error_with_etcds_message(self) -> None:
        registry = self.make_registry(user="msrpc", password="wrong")
        failure = self.failureResultOf(registry.register(ARITH), RegistryAuthError)
        self.assertIn("authentication failed, invalid user ID or password",
                      failure.value.message)

    def test_credentials_on_a_server_without_auth_still_work(self) -> None:
        self.fake.users.clear()
        self.assertEqual(self.successResultOf(self.registry.lookup("arith")), [])

    def test_password_and_token_never_reach_the_log(self) -> None:
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.register()
        self.fake.tokens.clear()
        self.router.down.add(E1)
        self.clock.advance(3.0)
        self.router.down.clear()
        self.clock.advance(3.0)
        text = "\n".join(formatEvent(e) + repr(e) for e in events)
        self.assertIn("msrpc", text)           # the log did say something about auth
        self.assertNotIn("s3cret-pw", text)
        self.assertNotIn("tok1.", text)


# --------------------------------------------------------------------------- lookup


class ConcurrencyTests(EtcdCase):
    def test_at_most_sixteen_requests_are_on_the_wire(self) -> None:
        self.router.hung.add(E1)
        lookups = [self.registry.lookup(f"s{i}") for i in range(20)]  # two ranges each
        self.assertEqual(len(self.router.tried), 16)
        for d in lookups:
            d.cancel()
            d.addErrback(lambda f: None)


class LookupTests(EtcdCase):
    def test_lookup_returns_registered_instances(self) -> None:
        self.register()
        other = ARITH.with_changes(host="10.0.0.6", instance_id="")
        self.register(other)
        self.assertEqual(self.successResultOf(self.registry.lookup("arith")), [ARITH, other])

    def test_lookup_ranges_over_the_service_prefix_only(self) -> None:
        self.register()
        self.register(ServiceInstance(service="arithmetic", host="h", port=1))
        self.assertEqual(self.successResultOf(self.registry.lookup("arith")), [ARITH])

    def test_lookup_reads_msgo_plain_host_port_key_as_a_msgo_instance(self) -> None:
        self.fake.put_raw("arith", "127.0.0.1:9112")
        instances = self.successResultOf(self.registry.lookup("arith"))
        self.assertEqual([(i.service, i.host, i.port, i.metadata) for i in instances],
                         [("arith", "127.0.0.1", 9112, {"dialect": "msgo"})])

    def test_lookup_reads_both_layouts_in_one_transaction(self) -> None:
        self.fake.put_raw("arith", "127.0.0.1:9000")
        self.register()
        found = self.successResultOf(self.registry.lookup("arith"))
        self.assertEqual(sorted(i.port for i in found), [9000, 9112])
        [txn] = self.fake.calls_to("/v3/kv/txn")
        self.assertEqual([op["request_range"]["key"] for op in txn.body["success"]],
                         [b64("/msrpc/services/arith/"), b64("arith")])
        self.assertEqual(self.fake.calls_to("/v3/kv/range"), [])

    def test_lookup_skips_plain_key_it_may_not_read(self) -> None:
        self.register()
        self.fake.allowed_prefix = b"/msrpc/"
        self.assertEqual(self.successResultOf(self.registry.lookup("arith")), [ARITH])
        self.assertEqual(self.successResultOf(self.registry.lookup("arith")), [ARITH])
        # the denied transaction once, then our prefix alone
        self.assertEqual(len(self.fake.calls_to("/v3/kv/txn")), 1)
        self.assertEqual(len(self.fake.calls_to("/v3/kv/range")), 2)

    def test_lookup_outside_granted_prefix_is_auth_error(self) -> None:
        self.fake.allowed_prefix = b"/other/"
        self.failureResultOf(self.registry.lookup("arith"), RegistryAuthError)

    def test_services_lists_service_names_under_the_prefix(self) -> None:
        self.register()
        self.register(ServiceInstance(service="echo", host="h", port=1))
        self.register(ServiceInstance(service="echo", host="h", port=2))
        self.assertEqual(self.successResultOf(self.registry.services()), ["arith", "echo"])
        self.assertTrue(verifyObject(IServiceCatalog, self.registry))

    def test_lookup_keeps_weight_zero_and_disabled_instances(self) -> None:
        drained = ARITH.with_changes(weight=0, enabled=False)
        self.register(drained)
        self.assertEqual(self.successResultOf(self.registry.lookup("arith")), [drained])

    def test_unreadable_value_is_skipped(self) -> None:
        self.register()
        self.fake.put_raw("/msrpc/services/arith/junk", "not json, not an address")
        self.assertEqual(self.successResultOf(self.registry.lookup("arith")), [ARITH])


# --------------------------------------------------------------------------- watch


class LineStreamTests(TestCase):
    LINES = [{"result": {"n": i, "text": "x" * i}} for i in range(6)]

    @settings(max_examples=200, deadline=None)
    @given(cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12))
    def test_lines_are_delivered_whole_whatever_the_chunking(self, cuts: list[int]) -> None:
        data = b"".join(json.dumps(line).encode() + b"\n" for line in self.LINES)
        got: list[dict[str, Any]] = []
        stream = LineStream(got.append)
        edges = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
        for a, b in zip(edges, edges[1:]):
            stream.dataReceived(data[a:b])
        stream.connectionLost(Failure(ResponseDone()))
        self.assertEqual(got, self.LINES)
        self.assertIsNone(self.successResultOf(stream.finished))

    def test_last_line_without_newline_is_delivered(self) -> None:
        got: list[dict[str, Any]] = []
        stream = LineStream(got.append)
        stream.dataReceived(b'{"a":1}\n{"b":2}')
        stream.connectionLost(Failure(ResponseDone()))
        self.assertEqual(got, [{"a": 1}, {"b": 2}])

    def test_handler_error_fails_finished(self) -> None:
        def boom(line: dict[str, Any]) -> None:
            raise ValueError("bad line")

        stream = LineStream(boom)
        stream.dataReceived(b'{"a":1}\n')
        self.failureResultOf(stream.finished, ValueError)


class WatchCase(EtcdCase):
    def setUp(self) -> None:
        super().setUp()
        self.seen: list[list[ServiceInstance]] = []

    def start_watch(self) -> IWatch:
        watch = self.registry.watch("arith", self.seen.append)
        self.addCleanup(watch.stop)
        self.router.flush()
        return watch

    @property
    def stream(self):  # the watch stream open right now
        return self.fake.watches[-1]

    def send(self, data: bytes) -> None:
        self.stream.send(data)
        self.router.flush()

    def created(self) -> None:
        self.send(self.stream.line({"created": True}, self.fake.revision))

    def endpoints_of(self, instances: Sequence[ServiceInstance]) -> list[int]:
        return [i.port for i in instances]


class WatchTests(WatchCase):
    def test_first_callback_has_the_initial_list(self) -> None:
        self.register()
        self.start_watch()
        self.assertEqual(self.seen, [[ARITH]])

    def test_first_callback_comes_even_for_an_empty_service(self) -> None:
        self.start_watch()
        self.assertEqual(self.seen, [[]])

    def test_watch_starts_after_the_listed_revision(self) -> None:
        self.register()
        listed = self.fake.revision
        self.start_watch()
        self.assertEqual(self.stream.start_revision, listed + 1)

    def test_watch_covers_the_whole_keyspace_where_msgo_keys_are_readable(self) -> None:
        self.start_watch()
        [body] = self.stream.bodies  # one watcher: etcd's gateway would drop later ones
        create = body["create_request"]
        self.assertEqual((create["key"], create["range_end"]), (b64("\0"), b64("\0")))

    def test_watch_covers_our_prefix_where_msgo_keys_are_not_readable(self) -> None:
        self.fake.allowed_prefix = b"/msrpc/"
        self.start_watch()
        create = self.stream.bodies[0]["create_request"]
        self.assertEqual((create["key"], create["range_end"]),
                         (b64("/msrpc/services/"), b64("/msrpc/services0")))

    def test_put_event_adds_an_instance(self) -> None:
        self.start_watch()
        self.created()
        self.send(watch_line([put_event(KEY, ARITH.to_json(), 5)], 5))
        self.assertEqual(self.seen, [[], [ARITH]])

    def test_delete_event_removes_an_instance(self) -> None:
        self.register()
        self.start_watch()
        self.created()
        self.send(watch_line([delete_event(KEY, 9)], 9))
        self.assertEqual(self.seen, [[ARITH], []])

    def test_events_split_across_chunks_are_applied(self) -> None:
        self.start_watch()
        data = (watch_line([put_event(KEY, ARITH.to_json(), 5)], 5)
                + watch_line([delete_event(KEY, 6)], 6))
        for i in range(0, len(data), 7):
            self.send(data[i:i + 7])
        self.assertEqual(self.seen, [[], [ARITH], []])

    def test_unchanged_value_does_not_call_back_again(self) -> None:
        self.register()
        self.start_watch()
        self.send(watch_line([put_event(KEY, ARITH.to_json(), 9)], 9))
        self.assertEqual(len(self.seen), 1)

    def test_msgo_plain_key_is_watched_too(self) -> None:
        self.fake.put_raw("arith", "127.0.0.1:9000")
        self.start_watch()
        self.send(watch_line([put_event("arith", "127.0.0.1:9001", 9)], 9))
        self.assertEqual([self.endpoints_of(s) for s in self.seen], [[9000], [9001]])

    def test_stop_closes_the_stream_and_silences_callbacks(self) -> None:
        watch = self.start_watch()
        stream = self.stream
        watch.stop()
        self.router.flush()
        self.assertTrue(stream.closed)
        stream.send(watch_line([put_event(KEY, ARITH.to_json(), 5)], 5))
        self.router.flush()
        self.assertEqual(self.seen, [[]])

    def test_callback_error_does_not_kill_the_watch(self) -> None:
        calls: list[int] = []

        def flaky(instances: Sequence[ServiceInstance]) -> None:
            calls.append(len(instances))
            if len(calls) == 1:
                raise RuntimeError("first call fails")

        watch = self.registry.watch("arith", flaky)
        self.addCleanup(watch.stop)
        self.router.flush()
        self.send(watch_line([put_event(KEY, ARITH.to_json(), 5)], 5))
        self.assertEqual(calls, [0, 1])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_stop_while_listing_leaves_nothing_behind(self) -> None:
        self.router.hung.add(E1)
        watch = self.registry.watch("arith", self.seen.append)
        watch.stop()
        self.assertEqual(self.router.tried, [E1])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.seen, [])

    def test_close_stops_watches(self) -> None:
        self.start_watch()
        stream = self.stream
        self.successResultOf(self.registry.close())
        self.router.flush()
        self.assertTrue(stream.closed)


class WatchRecoveryTests(WatchCase):
    endpoints = (E1, E2)

    def test_resumes_after_last_event_revision_when_stream_ends(self) -> None:
        self.start_watch()
        self.created()
        self.send(watch_line([put_event(KEY, ARITH.to_json(), 41)], 41))
        self.stream.end()
        self.router.flush()
        self.clock.advance(1.0)
        self.router.flush()
        self.assertEqual(len(self.fake.watches), 2)
        self.assertEqual(self.stream.start_revision, 42)

    def test_resume_does_not_list_again(self) -> None:
        self.start_watch()
        self.stream.end()
        self.router.flush()
        self.clock.advance(1.0)
        self.assertEqual(len(self.fake.calls_to("/v3/kv/txn")), 1)  # prefix + plain, once

    def test_resume_fails_over_to_another_endpoint(self) -> None:
        self.start_watch()
        self.stream.end()
        self.router.flush()
        self.router.down.add(E1)
        self.clock.advance(1.0)
        self.router.flush()
        self.assertEqual(len(self.fake.watches), 2)
        self.assertEqual(self.router.tried[-2:], [E1, E2])

    def test_stream_error_line_reconnects(self) -> None:
        self.start_watch()
        self.send(b'{"error":{"grpc_code":14,"http_code":503,"message":"error reading from '
                  b'server: EOF","http_status":"Service Unavailable"}}\n')
        self.router.flush()
        self.assertTrue(self.fake.watches[0].closed)
        self.clock.advance(1.0)
        self.router.flush()
        self.assertEqual(len(self.fake.watches), 2)

    def test_progress_notify_advances_the_resume_revision(self) -> None:
        self.start_watch()
        self.created()
        self.send(self.stream.line({}, 77))
        self.stream.end()
        self.router.flush()
        self.clock.advance(1.0)
        self.router.flush()
        self.assertEqual(self.stream.start_revision, 78)

    def test_events_of_other_keys_advance_the_resume_revision_too(self) -> None:
        self.start_watch()
        self.send(watch_line([put_event("/unrelated/key", "x", 60)], 60))
        self.stream.end()
        self.router.flush()
        self.clock.advance(1.0)
        self.router.flush()
        self.assertEqual(self.stream.start_revision, 61)
        self.assertEqual(self.seen, [[]])

    def test_compaction_lists_again_and_rewatches_from_the_new_revision(self) -> None:
        self.start_watch()
        self.register()                           # changed while we were away
        self.send(self.stream.line({"canceled": True, "compact_revision": "3"}, 3))
        self.router.flush()
        self.assertTrue(self.fake.watches[0].closed)  # etcd leaves it open; we close it
        self.assertEqual(len(self.fake.calls_to("/v3/kv/txn")), 2)
        self.assertEqual(self.stream.start_revision, self.fake.revision + 1)
        self.assertEqual(self.seen, [[], [ARITH]])

    def test_retries_back_off_while_etcd_is_down(self) -> None:
        delays: list[int] = []
        registry = EtcdRegistry(self.clock, [E1], http=self.router,
                                backoff=lambda n: delays.append(n) or 2.0 ** n)
        self.router.down.add(E1)
        watch = registry.watch("arith", self.seen.append)
        self.addCleanup(watch.stop)
        self.clock.pump([1.0, 2.0, 4.0])
        self.assertEqual(delays, [0, 1, 2, 3])
        self.router.down.clear()
        self.clock.advance(8.0)
        self.router.flush()
        self.assertEqual(self.seen, [[]])


class WatchAuthTests(WatchCase):
    def setUp(self) -> None:
        super().setUp()
        self.fake.users["msrpc"] = "pw"
        self.registry = self.make_registry(user="msrpc", password="pw")

    def test_in_band_auth_cancel_reauthenticates_and_retries(self) -> None:
        self.start_watch()
        self.send(self.stream.line({"created": True, "canceled": True, "cancel_reason":
                                    "rpc error: code = PermissionDenied desc = etcdserver: "
                                    "permission denied"}, 3))
        self.assertEqual(len(self.fake.calls_to("/v3/auth/authenticate")), 2)
        self.clock.advance(1.0)
        self.router.flush()
        self.assertEqual(len(self.fake.watches), 2)
        self.assertIn(self.fake.calls_to("/v3/watch")[-1].token, self.fake.tokens)


# --------------------------------------------------------------------------- options


class OptionsTests(TestCase):
    def parse(self, *argv: str) -> usage.Options:
        class Options(usage.Options):
            optParameters = OPTIONS

        options = Options()
        options.parseOptions(list(argv))
        return options

    def test_etcd_is_a_registry_backend(self) -> None:
        self.assertIs(backend_module("etcd"), etcd_module)

    def test_default_endpoint_is_local_etcd(self) -> None:
        registry = from_options(Clock(), self.parse())
        self.assertEqual(registry.gateway.endpoints.urls, ["http://127.0.0.1:2379"])

    def test_from_options_builds_the_registry(self) -> None:
        options = self.parse("--etcd", "h1:2379,http://h2:2379",
                             "--etcd-ttl", "6", "--etcd-prefix", "/x/")
        registry = from_options(Clock(), options)
        self.assertEqual((registry.gateway.endpoints.urls, registry.ttl, registry.prefix),
                         (["http://h1:2379", "http://h2:2379"], 6.0, "/x"))

    def test_password_comes_from_a_file(self) -> None:
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        path = os.path.join(directory, "password")
        with open(path, "w") as f:
            f.write("pw-from-file\n")
        options = self.parse("--etcd-user", "msrpc", "--etcd-password-file", path)
        registry = from_options(Clock(), options)
        self.assertEqual(registry.gateway._password, "pw-from-file")

    def test_password_comes_from_the_environment(self) -> None:
        self.patch(os, "environ", {**os.environ, "MSRPC_ETCD_PASSWORD": "pw-from-env"})
        registry = from_options(Clock(), self.parse("--etcd-user", "msrpc"))
        self.assertEqual(registry.gateway._password, "pw-from-env")

    def test_user_without_password_is_a_usage_error(self) -> None:
        self.patch(os, "environ", {k: v for k, v in os.environ.items()
                                   if k != "MSRPC_ETCD_PASSWORD"})
        self.assertRaises(usage.UsageError, from_options, Clock(),
                          self.parse("--etcd-user", "msrpc"))

    def test_no_option_takes_a_password_in_clear(self) -> None:
        self.assertNotIn("etcd-password", [row[0] for row in OPTIONS])

    def test_tls_files_make_bare_endpoints_https(self) -> None:
        options = self.parse("--etcd", "h1:2379", "--etcd-ca", __file__)
        self.patch(etcd_module, "make_http_client",
                   lambda reactor, tls, pool: object())
        registry = from_options(Clock(), options)
        self.assertEqual(registry.gateway.endpoints.urls, ["https://h1:2379"])
