"""
The benchmark harness's own arithmetic and the baseline's id matching.
"""

from __future__ import annotations

import msgpack
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from bench import workload
from bench.run import Case, cpu_ms_per_mb, summarize, table, variant_of
from bench.stats import Recorder, percentile
from bench.systems.baseline import EchoClient


class PercentileTests(TestCase):
    def test_nearest_rank(self) -> None:
        ordered = [float(i) for i in range(1, 101)]
        self.assertEqual(percentile(ordered, 50), 50.0)
        self.assertEqual(percentile(ordered, 99), 99.0)
        self.assertEqual(percentile([7.0], 99), 7.0)


class RecorderTests(TestCase):
    def started(self, warmup: float = 1.0, duration: float = 2.0) -> Recorder:
        rec = Recorder(warmup=warmup, duration=duration, max_calls=10)
        rec.measure_from, rec.stop_at = 100.0, 100.0 + duration
        return rec

    def test_warmup_calls_are_not_measured(self) -> None:
        rec = self.started()
        self.assertTrue(rec.completed(99.0, 99.5))
        self.assertEqual(rec.summary()["calls"], 0)

    def test_calls_completing_in_the_window_are_measured(self) -> None:
        rec = self.started()
        self.assertTrue(rec.completed(99.9, 100.1))
        self.assertTrue(rec.completed(100.5, 100.6))
        summary = rec.summary()
        self.assertEqual(summary["calls"], 2)
        self.assertEqual(summary["calls_per_s"], 1.0)

    def test_completion_after_the_window_stops_the_slot(self) -> None:
        rec = self.started()
        self.assertFalse(rec.completed(101.9, 102.0))
        self.assertEqual(rec.summary()["calls"], 0)

    def test_max_calls_bounds_issuing(self) -> None:
        rec = Recorder(warmup=0, duration=1, max_calls=2)
        self.assertEqual([rec.next_call(), rec.next_call(), rec.next_call()], [0, 1, None])
        self.assertTrue(rec.hit_max_calls)

    def test_failure_is_counted_with_the_first_error(self) -> None:
        rec = self.started()
        rec.failed(ValueError("boom"))
        rec.failed(ValueError("again"))
        summary = rec.summary()
        self.assertEqual(summary["errors"], 2)
        self.assertIn("boom", summary["first_error"])


def _run(system: str, rnd: int, rate: float) -> dict:
    return {"system": system, "concurrency": 1, "round": rnd, "calls_per_s": rate,
            "p50_us": rate, "p99_us": rate, "errors": 0}  # fmt: skip


class SummarizeTests(TestCase):
    def test_median_round_and_paired_ratio(self) -> None:
        runs = [
            _run("base", 0, 100.0), _run("other", 0, 50.0),
            _run("base", 1, 200.0), _run("other", 1, 60.0),
            _run("base", 2, 100.0), _run("other", 2, 40.0),
        ]  # fmt: skip
        base, other = summarize(runs, ["base", "other"], [Case(1)], "base")
        self.assertEqual(other["calls_per_s"], 50.0)
        self.assertEqual(other["p50_us"], 50.0)  # taken from the same round
        self.assertEqual(other["ratio"], 0.4)  # median of 0.5, 0.3, 0.4
        self.assertEqual(base["ratio"], 1.0)
        self.assertEqual((other["min_calls_per_s"], other["max_calls_per_s"]), (40.0, 60.0))


    def test_variants_are_also_compared_with_the_system_they_vary(self) -> None:
        runs = [
            _run("base", 0, 100.0), _run("msrpc", 0, 80.0), _run("msrpc_metrics", 0, 76.0),
            _run("base", 1, 100.0), _run("msrpc", 1, 50.0), _run("msrpc_metrics", 1, 50.0),
        ]  # fmt: skip
        rows = summarize(runs, ["base", "msrpc", "msrpc_metrics"], [Case(1)], "base")
        plain, metrics = rows[1], rows[2]
        self.assertEqual((plain["variant_of"], plain["variant_ratio"]), (None, None))
        self.assertEqual(metrics["variant_of"], "msrpc")
        self.assertAlmostEqual(metrics["variant_ratio"], 0.975)  # median of 0.95 and 1.0
        self.assertIn("vs plain", table(rows, "base"))

    def test_names_with_underscores_are_variants_only_of_systems_that_run(self) -> None:
        self.assertIsNone(variant_of("grpc_aio", ["baseline", "grpc_aio"]))
        self.assertEqual(variant_of("msrpc_metrics", ["msrpc", "msrpc_metrics"]), "msrpc")

class PayloadSummaryTests(TestCase):
    def test_cases_are_summarized_apart_and_cpu_is_per_echoed_megabyte(self) -> None:
        runs = []
        for size in (1024, 65536):
            for rnd, (base, other) in enumerate([(100.0, 80.0), (200.0, 150.0)]):
                for system, rate in (("base", base), ("other", other)):
                    run = _run(system, rnd, rate)
                    run.update(payload_bytes=size, kind="bytes", compression="gzip",
                               cpu_s=0.5, server_cpu_s=0.25, calls_total=1000)
                    runs.append(run)
        cases = [Case(1, 1024, "bytes", "gzip"), Case(1, 65536, "bytes", "gzip")]
        rows = summarize(runs, ["base", "other"], cases, "base")
        self.assertEqual([(r["payload_bytes"], r["system"]) for r in rows],
                         [(1024, "base"), (1024, "other"), (65536, "base"), (65536, "other")])
        small = rows[1]
        self.assertEqual(small["ratio"], 0.775)  # median of 0.8 and 0.75
        self.assertEqual(small["mb_per_s"], 80.0 * 1024 / 1e6)
        # 1000 calls of 1024 bytes: 0.001024 MB; 500 ms of client CPU over it.
        self.assertAlmostEqual(small["client_cpu_ms_per_mb"], 500 / 1.024)
        self.assertAlmostEqual(small["server_cpu_ms_per_mb"], 250 / 1.024)

    def test_cpu_per_megabyte_needs_a_payload_and_a_reading(self) -> None:
        self.assertIsNone(cpu_ms_per_mb({"cpu_s": 1.0, "calls_total": 10}, "cpu_s"))
        self.assertIsNone(cpu_ms_per_mb({"payload_bytes": 10, "calls_total": 10},
                                        "server_cpu_s"))


class WorkloadTests(TestCase):
    def tearDown(self) -> None:
        workload.configure(None)

    def test_sizes_parse_in_powers_of_1024(self) -> None:
        self.assertEqual([workload.parse_size(t) for t in ("1k", "64KiB", "1m", "512")],
                         [1024, 65536, 1 << 20, 512])
        self.assertRaises(ValueError, workload.parse_size, "0")
        self.assertEqual(workload.size_label(65536), "64 KiB")

    def test_payloads_have_the_size_and_kind_asked_for_and_compress(self) -> None:
        import zlib
        for kind, cls in (("bytes", bytes), ("str", str)):
            payload = workload.make_payload(65536, kind)
            self.assertIsInstance(payload, cls)
            self.assertEqual(len(payload), 65536)
        self.assertLess(len(zlib.compress(workload.make_payload(65536, "bytes"))), 65536 // 2)

    def test_an_echo_must_carry_the_whole_payload_back(self) -> None:
        workload.configure(4096, "bytes")
        request = workload.request(7)
        self.assertTrue(workload.is_echo(dict(request), 7))
        self.assertFalse(workload.is_echo({"id": 7, "payload": request["payload"][:-1]}, 7))
        self.assertFalse(workload.is_echo(dict(request), 8))


class BaselineClientTests(TestCase):
    def test_replies_are_matched_by_id_in_any_order(self) -> None:
        client = EchoClient()
        client.makeConnection(StringTransport())
        first, second = client.call("a"), client.call("b")
        for reply in ([1, "b"], [0, "a"]):
            body = msgpack.packb(reply)
            client.dataReceived(len(body).to_bytes(4, "big") + body)
        self.assertEqual(self.successResultOf(first), "a")
        self.assertEqual(self.successResultOf(second), "b")


class PerCallTests(TestCase):
    """``bench.percall`` measures completed round trips only, on both sides."""

    def test_every_measurement_completes_its_calls(self) -> None:
        from bench import percall
        for _, baseline, ours in percall.SIDES:
            for measure in (baseline, ours):
                for batch in (1, 5):
                    self.assertGreater(measure(batch, 3), 0.0)

    def test_payload_measurements_complete_across_several_reads(self) -> None:
        from bench import percall
        workload.configure(200_000, "bytes")  # each frame in four reads
        self.addCleanup(setattr, percall, "VALUE", percall.VALUE)
        self.addCleanup(workload.configure, None)
        percall.VALUE = workload.request(1)
        for _, baseline, ours in percall.SIDES:
            for measure in (baseline, ours):
                self.assertGreater(measure(2, 2), 0.0)

    def test_each_msrpc_side_is_fed_what_the_other_writes(self) -> None:
        from bench import percall
        from msrpc.codec import MsgpackCodec
        codec = MsgpackCodec()
        request = codec.decode(percall.msrpc_request_body())
        self.assertEqual((request["service"], request["method"], request["args"]),
                         ("echo", "echo", [percall.VALUE]))
        self.assertEqual(codec.decode(percall.msrpc_reply_body())["data"], percall.VALUE)


class InstructionCountTests(TestCase):
    """``bench.instructions``: its cells run outside valgrind too (the marks are plain
    system calls), and the count is read from callgrind's dump."""

    def test_every_cell_completes_its_calls(self) -> None:
        from bench import instructions
        for side in ("client", "server"):
            for system in ("baseline", "msrpc", "metrics", "w3c", "otel"):
                instructions.run_cell(side, system, 4, 8, 4)

    def test_the_count_is_the_summary_of_the_dump(self) -> None:
        from bench import instructions
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("version: 1\ncreator: callgrind-3.19.0\nevents: Ir\nsummary: 123456\n")
        self.assertEqual(instructions._summary(path), 123456)


class ReactorChoiceTests(TestCase):
    def test_system_names_may_carry_a_reactor(self) -> None:
        from bench import reactors
        self.assertEqual(reactors.split("msrpc@uvloop"), ("msrpc", "uvloop"))
        self.assertEqual(reactors.split("msrpc"), ("msrpc", None))
        self.assertEqual(set(reactors.INSTALLERS), {"epoll", "asyncio", "uvloop"})

    def test_a_reactor_row_is_a_variant_of_the_plain_system(self) -> None:
        from bench.run import variant_of
        self.assertEqual(variant_of("msrpc@uvloop", ["baseline", "msrpc", "msrpc@uvloop"]),
                         "msrpc")
        self.assertIsNone(variant_of("msrpc@uvloop", ["baseline", "msrpc@uvloop"]))

    def test_cpu_per_call_is_the_median_over_rounds(self) -> None:
        from bench.run import cpu_us_per_call
        runs = [{"server_cpu_s": cpu, "calls_total": 1000} for cpu in (0.01, 0.03, 0.02)]
        self.assertEqual(cpu_us_per_call(runs, "server_cpu_s"), 20.0)
        self.assertIsNone(cpu_us_per_call([{"calls_total": 5}], "server_cpu_s"))

    def test_bench_run_refuses_an_unknown_reactor(self) -> None:
        from bench.run import parse_args
        self.assertEqual(parse_args(["--systems", "baseline,msrpc@asyncio"]).systems,
                         ["baseline", "msrpc@asyncio"])
        self.assertRaises(SystemExit, parse_args, ["--systems", "msrpc@nope"])


class ScaleBenchTests(TestCase):
    def test_descriptor_limit_is_raised_up_to_the_hard_limit_only(self) -> None:
        import resource
        from bench.connections import raise_descriptor_limit
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        self.assertEqual(raise_descriptor_limit(1), soft)  # never lowered
        if hard != resource.RLIM_INFINITY:
            self.assertEqual(raise_descriptor_limit(hard + 1000), hard)

    def test_workers_rows_give_scaling_and_the_ratio_to_the_baseline(self) -> None:
        from bench.workers import summarize as summarize_workers
        runs = [{"system": s, "workers": n, "calls_per_s": rate, "server_cores": cores,
                 "errors": 0}
                for s, n, rate, cores in (("baseline", 1, 100.0, 1.0),
                                          ("baseline", 2, 190.0, 2.0),
                                          ("msrpc", 1, 80.0, 1.0),
                                          ("msrpc", 2, 152.0, 1.9))]
        rows = {(r["system"], r["workers"]): r
                for r in summarize_workers(runs, ["baseline", "msrpc"], [1, 2])}
        self.assertAlmostEqual(rows["msrpc", 2]["scaling"], 1.9)
        self.assertAlmostEqual(rows["msrpc", 2]["vs_baseline"], 0.8)
        self.assertAlmostEqual(rows["msrpc", 2]["calls_per_core_s"], 80.0)

    def test_workers_table_shows_each_rounds_connections_per_process(self) -> None:
        from bench.workers import summarize as summarize_workers, table as workers_table
        runs = [{"system": "msrpc", "workers": 2, "calls_per_s": rate, "server_cores": 1.0,
                 "cpu_wait_cores": wait, "connections": split, "errors": 0}
                for rate, wait, split in ((100.0, 0.5, [9, 7]), (120.0, 0.25, [12, 4]),
                                          (90.0, 1.0, [8, 8]))]
        [row] = summarize_workers(runs, ["msrpc"], [2])
        self.assertEqual(row["cpu_wait_cores"], 0.5)
        self.assertIn("9/7 12/4 8/8", workers_table([row], 2))

    def test_established_connections_are_counted_per_process_holding_them(self) -> None:
        import os
        import socket
        from bench.workers import _established_inodes, _sockets_of
        listener = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(listener.close)
        port = listener.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        self.addCleanup(client.close)
        accepted, _ = listener.accept()
        self.addCleanup(accepted.close)
        inodes = _established_inodes(port)
        self.assertEqual(inodes, {os.fstat(accepted.fileno()).st_ino})  # not the client's
        self.assertEqual(_sockets_of(os.getpid(), inodes), 1)

    def test_each_systems_servers_share_one_session_of_their_own(self) -> None:
        # With autogroup scheduling, CPU is shared between sessions: N baseline processes
        # in N sessions would get N shares of a busy machine where msrpc's N workers,
        # in their supervisor's session, get one.
        import os
        from bench.workers import ServerSide, _group_members
        for system in ("baseline", "msrpc"):
            server = ServerSide(system, 2, 0)
            try:
                members = _group_members(server.groups)
                self.assertEqual(len(members), 3, system)  # the parent and 2 servers
                sessions = {os.getsid(pid) for pid in members}
                self.assertEqual(len(sessions), 1, system)
                self.assertNotIn(os.getsid(0), sessions)
                self.assertEqual(server.connections(), [0, 0])
            finally:
                server.stop()
            self.assertEqual(_group_members(server.groups), {}, system)
