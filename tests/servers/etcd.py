"""
Real etcd servers for integration tests (binaries from ``scripts/install-etcd``).

``start_etcd(test)`` / ``start_cluster(test)`` start a single node or a 3-member cluster on
free loopback ports with temporary data dirs, wait until ``/health`` says true, and
register cleanups that stop them, print their logs if the test failed, and remove the
files.  Everything returns Deferreds; nothing sleeps.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from twisted.internet import defer, utils
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

import treq
from treq.client import HTTPClient

from msrpc.registry.http import TLSFiles, make_http_client
from tests.servers import SERVERS_DIR, free_ports, server_unavailable, wait_for
from tests.servers.process import LoggedProcess
from tests.servers.tls import PKI, make_pki

VERSIONS = ("3.4", "3.5")
ROOT_PASSWORD = "root-pw"
START_TIMEOUT = 30.0


@dataclass(frozen=True)
class EtcdBinaries:
    version: str
    etcd: Path
    etcdctl: Path


def etcd_binaries(version: str) -> EtcdBinaries:
    """The installed binaries of an etcd line ("3.4" or "3.5"), or skip (fail under CI)."""
    bindir = SERVERS_DIR / f"etcd-{version}" / "bin"
    found = EtcdBinaries(version, bindir / "etcd", bindir / "etcdctl")
    if not (os.access(found.etcd, os.X_OK) and os.access(found.etcdctl, os.X_OK)):
        server_unavailable(f"etcd {version} is not installed in {bindir}; "
                           f"run scripts/install-etcd")
    return found


def _http(reactor: Any, pki: Optional[PKI] = None) -> HTTPClient:
    """A client that keeps no connection open (trial checks the reactor is clean)."""
    pool = HTTPConnectionPool(reactor, persistent=False)
    if pki is not None:
        return make_http_client(reactor, client_tls(pki), pool=pool)
    return HTTPClient(Agent(reactor, pool=pool))


def client_tls(pki: PKI) -> TLSFiles:
    """What a client of a TLS etcd started with ``pki`` needs."""
    return TLSFiles(ca=str(pki.ca), cert=str(pki.client_cert), key=str(pki.client_key))


async def post_json(reactor: Any, url: str, body: dict[str, Any],
                    timeout: float = 5.0) -> tuple[int, Any]:
    """One gateway request outside the code under test: (status, decoded body)."""
    d = _http(reactor).post(url, data=json.dumps(body).encode())
    d.addTimeout(timeout, reactor)
    response = await d
    content = await treq.content(response)
    try:
        return response.code, json.loads(content)
    except ValueError:
        return response.code, content.decode(errors="replace")


class EtcdServer:
    """
    One etcd member.  A single node by default; ``EtcdCluster`` passes ``initial_cluster``.
    ``restart`` keeps the data dir and ports; ``restart(fresh=True)`` wipes the data, so
    every lease and key is gone, as after losing the disk.
    """

    def __init__(self, reactor: Any, version: str = "3.5", *, name: str = "msrpc",
                 workdir: Optional[Path] = None, client_port: Optional[int] = None,
                 peer_port: Optional[int] = None, initial_cluster: Optional[str] = None,
                 pki: Optional[PKI] = None, extra_args: Sequence[str] = ()) -> None:
        self.reactor = reactor
        self.bin = etcd_binaries(version)
        self.version = version
        self.name = name
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix=f"msrpc-etcd{version}-"))
        if client_port is None or peer_port is None:
            client_port, peer_port = free_ports(2)
        self.client_port, self.peer_port = client_port, peer_port
        self.pki = pki  # https with client certificates when given
        self.url = f"{'https' if pki else 'http'}://127.0.0.1:{client_port}"
        self.peer_url = f"http://127.0.0.1:{peer_port}"
        self.data_dir = self.workdir / f"{name}.etcd"
        self.log_path = self.workdir / f"{name}.log"
        self.initial_cluster = initial_cluster or f"{name}={self.peer_url}"
        self.extra_args = list(extra_args)
        self.process: Optional[LoggedProcess] = None
        self.auth_enabled = False

    def argv(self) -> list[str]:
        return [
            str(self.bin.etcd), "--name", self.name, "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
            "--listen-peer-urls", self.peer_url, "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", self.initial_cluster, "--initial-cluster-state", "new",
            "--initial-cluster-token", f"msrpc-test-{self.workdir.name}",
            # short raft timers: elections (startup, leader loss) take a fraction of a second
            "--heartbeat-interval", "50", "--election-timeout", "250",
            *self._tls_args(), *self.extra_args,
        ]

    def _tls_args(self) -> list[str]:
        if self.pki is None:
            return []
        return ["--cert-file", str(self.pki.server_cert), "--key-file", str(self.pki.server_key),
                "--trusted-ca-file", str(self.pki.ca), "--client-cert-auth"]

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.running

    def spawn(self) -> None:
        """Start the process without waiting (cluster members must start together)."""
        if self.running:
            raise RuntimeError(f"etcd {self.name} is already running")
        self.process = LoggedProcess(self.reactor, self.argv(), self.log_path)

    def start(self) -> "defer.Deferred[None]":
        self.spawn()
        return self.wait_healthy()

    def wait_healthy(self, timeout: float = START_TIMEOUT) -> "defer.Deferred[None]":
        d = wait_for(self.reactor, self.healthy, timeout, f"etcd {self.name} at {self.url}")

        def explain(failure: Any) -> Any:
            sys.stderr.write(self.log_tail())
            return failure

        return d.addErrback(explain)

    async def healthy(self) -> bool:
        if not self.running:
            raise RuntimeError(f"etcd {self.name} exited:\n{self.log_tail()}")
        d = _http(self.reactor, self.pki).get(self.url + "/health")
        d.addTimeout(2.0, self.reactor)
        response = await d
        body = await treq.content(response)
        return response.code == 200 and json.loads(body).get("health") == "true"

    def stop(self) -> "defer.Deferred[None]":
        """SIGTERM and wait for the exit (SIGKILL after 10 s)."""
        if self.process is None:
            return defer.succeed(None)
        return defer.Deferred.fromCoroutine(self.process.terminate(self.reactor))

    def kill(self) -> "defer.Deferred[None]":
        """SIGKILL: no goodbye to clients or peers, like a crash."""
        if self.process is None:
            return defer.succeed(None)
        return defer.Deferred.fromCoroutine(self.process.kill())

    def restart(self, fresh: bool = False) -> "defer.Deferred[None]":
        async def restart() -> None:
            if self.running:
                await self.stop()
            if fresh:
                shutil.rmtree(self.data_dir, ignore_errors=True)
                self.auth_enabled = False
            await self.start()

        return defer.Deferred.fromCoroutine(restart())

    # ----------------------------------------------------------------- etcdctl

    def etcdctl(self, *args: str, endpoints: Optional[str] = None) -> "defer.Deferred[str]":
        """Run etcdctl (API v3) against this member; its stdout, or a failure with stderr."""
        argv = [f"--endpoints={endpoints or self.url}", "--command-timeout=5s"]
        if self.auth_enabled:
            argv.append(f"--user=root:{ROOT_PASSWORD}")
        if self.pki is not None:
            argv += [f"--cacert={self.pki.ca}", f"--cert={self.pki.client_cert}",
                     f"--key={self.pki.client_key}"]
        env = {"ETCDCTL_API": "3", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        d = utils.getProcessOutputAndValue(str(self.bin.etcdctl), [*argv, *args], env=env,
                                           reactor=self.reactor)

        def check(result: tuple[bytes, bytes, int]) -> str:
            out, err, code = result
            if code != 0:
                raise RuntimeError(f"etcdctl {' '.join(args)} exited {code}: "
                                   f"{err.decode(errors='replace')}")
            return out.decode()

        return d.addCallback(check)

    def enable_auth(self, user: str = "msrpc", password: str = "msrpc-pw",
                    prefix: str = "/msrpc/") -> "defer.Deferred[None]":
        """root (with the root role) plus ``user`` allowed read-write under ``prefix``."""

        async def enable() -> None:
            for args in (["user", "add", f"root:{ROOT_PASSWORD}"],
                         ["role", "add", "root"],
                         ["user", "grant-role", "root", "root"],
                         ["user", "add", f"{user}:{password}"],
                         ["role", "add", user],
                         ["role", "grant-permission", user, "--prefix=true", "readwrite",
                          prefix],
                         ["user", "grant-role", user, user],
                         ["auth", "enable"]):
                await self.etcdctl(*args)
            self.auth_enabled = True

        return defer.Deferred.fromCoroutine(enable())

    # ----------------------------------------------------------------- logs

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return f"\n----- {self.log_path} (last {lines} lines)\n" + "\n".join(text) + "\n"


class EtcdCluster:
    """Three (or ``size``) members on loopback, started together."""

    def __init__(self, reactor: Any, version: str = "3.5", size: int = 3) -> None:
        self.reactor = reactor
        etcd_binaries(version)  # skip before making anything
        self.workdir = Path(tempfile.mkdtemp(prefix=f"msrpc-etcd{version}-cluster-"))
        ports = free_ports(2 * size)
        names = [f"m{i + 1}" for i in range(size)]
        initial = ",".join(f"{n}=http://127.0.0.1:{ports[2 * i + 1]}"
                           for i, n in enumerate(names))
        self.members = [EtcdServer(reactor, version, name=n, workdir=self.workdir,
                                   client_port=ports[2 * i], peer_port=ports[2 * i + 1],
                                   initial_cluster=initial)
                        for i, n in enumerate(names)]

    @property
    def urls(self) -> list[str]:
        return [m.url for m in self.members]

    def start(self) -> "defer.Deferred[Any]":
        for member in self.members:
            member.spawn()
        return defer.gatherResults([m.wait_healthy() for m in self.members],
                                   consumeErrors=True)

    def leader(self) -> "defer.Deferred[EtcdServer]":
        """The member that is leader now, asked of the running members."""

        async def leader() -> EtcdServer:
            for member in self.members:
                if not member.running:
                    continue
                code, status = await post_json(self.reactor,
                                               member.url + "/v3/maintenance/status", {})
                if code != 200 or not status.get("leader"):
                    continue
                for candidate in self.members:
                    if candidate.running and await self._member_id(candidate) == status["leader"]:
                        return candidate
            raise RuntimeError("no etcd member knows a leader")

        return defer.Deferred.fromCoroutine(leader())

    def wait_leader(self, timeout: float = 10.0) -> "defer.Deferred[None]":
        """
        Until a running member leads.  Write right after killing the leader and wait for
        this first: a proposal in flight to the dead leader hangs until etcd's 5 s timeout.
        """

        async def led() -> bool:
            await self.leader()
            return True

        return wait_for(self.reactor, led, timeout, "a new etcd leader")

    async def _member_id(self, member: EtcdServer) -> str:
        _, status = await post_json(self.reactor, member.url + "/v3/maintenance/status", {})
        return str(status["header"]["member_id"])

    def stop(self) -> "defer.Deferred[Any]":
        return defer.gatherResults([m.stop() for m in self.members], consumeErrors=True)

    def kill(self) -> "defer.Deferred[Any]":
        """SIGKILL every member.  Teardown uses this: SIGTERMing the members of a cluster
        that already lost one makes each wait seconds for a leadership transfer."""
        return defer.gatherResults([m.kill() for m in self.members], consumeErrors=True)

    def log_tail(self) -> str:
        return "".join(m.log_tail() for m in self.members)


def _cleanup(test: TestCase, stop: Any, log_tail: Any, workdir: Path) -> None:
    """Stop, show the logs if the test failed, then remove the files (LIFO order)."""
    test.addCleanup(shutil.rmtree, workdir, True)

    def show_logs_on_failure() -> None:
        if not getattr(test, "_passed", False):
            sys.stderr.write(log_tail())

    test.addCleanup(show_logs_on_failure)
    test.addCleanup(stop)


def start_etcd(test: TestCase, version: str = "3.5",
               **kwargs: Any) -> "defer.Deferred[EtcdServer]":
    """
    A running single-node etcd, stopped and removed when ``test`` ends.  ``tls=True``
    serves https with client-certificate auth (``server.pki`` has the PEM files).
    """
    from twisted.internet import reactor

    etcd_binaries(version)  # skip before making anything
    if kwargs.pop("tls", False):
        workdir = Path(tempfile.mkdtemp(prefix=f"msrpc-etcd{version}-tls-"))
        kwargs.update(workdir=workdir, pki=make_pki(workdir))
    server = EtcdServer(reactor, version, **kwargs)
    _cleanup(test, server.stop, server.log_tail, server.workdir)
    return server.start().addCallback(lambda _: server)


def start_cluster(test: TestCase, version: str = "3.5",
                  size: int = 3) -> "defer.Deferred[EtcdCluster]":
    """A running cluster, stopped and removed when ``test`` ends."""
    from twisted.internet import reactor

    cluster = EtcdCluster(reactor, version, size)
    _cleanup(test, cluster.kill, cluster.log_tail, cluster.workdir)
    return cluster.start().addCallback(lambda _: cluster)
