"""
Real Nacos servers for the integration tests (installed by ``scripts/install-nacos``).

``NacosServer`` starts one standalone server (embedded Derby storage) on loopback with a
temporary ``nacos.home`` in one of the configurations of ``CONFIGS`` (2.3.2 with the v1 API;
3.1.0 with its v1 client API switched off, as 3.2+ have none; either with auth on; 3.1.0 as
shipped, with both APIs), and can stop, kill and restart it.  A Nacos JVM takes 15-20 s to start on two cores, so
``shared_nacos()`` hands out one lazily started server per configuration and test process,
and the first call starts every configuration a run needs at once (``MSRPC_NACOS_CONFIGS``,
default all), in parallel.  Tests may restart a shared server (it comes back on the same
ports) but must leave it running.  Every server is SIGKILLed at interpreter exit and, where
``setpriv`` exists, also when the test process itself dies, so none outlives the run.

HTTP calls made here (readiness, login, the tests' direct look at Nacos's own API) use the
standard library in a thread: they must not depend on the adapter under test, and they leave
no connection behind in the reactor for trial's dirty-reactor check.
"""

from __future__ import annotations

import atexit
import base64
import json
import os
import shutil
import signal
import socket
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from twisted.internet import defer, protocol, task, threads
from twisted.python.failure import Failure

from tests.servers import SERVERS_DIR, server_unavailable

NACOS_VERSION = os.environ.get("MSRPC_NACOS_VERSION", "2.3.2")
NACOS3_VERSION = "3.1.0"
HOST = "127.0.0.1"
CONTEXT = "/nacos"

#: The built-in admin of Nacos 2.3 (its Derby schema creates it with this password); Nacos
#: 2.4+ and 3.x have none until ``POST /v1/auth/users/admin`` (3.x: ``/v3/auth/user/admin``)
#: sets one, which ``start`` does.
ADMIN_USER = "nacos"
ADMIN_PASSWORD = "nacos"


@dataclass(frozen=True)
class NacosConfig:
    """One way of running Nacos in the suite."""

    name: str
    version: str
    auth: bool = False
    #: The v1 client API (``nacos.core.api.compatibility.client.enabled`` on 3.x).
    v1: bool = True

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    @property
    def dialect(self) -> str:
        """The HTTP API msrpc's auto-detection should pick on this server."""
        return "v3" if self.major >= 3 else "v1"


CONFIGS: dict[str, NacosConfig] = {c.name: c for c in (
    NacosConfig("2.3.2", NACOS_VERSION),
    NacosConfig("2.3.2-auth", NACOS_VERSION, auth=True),
    # as 3.2+ are (v1 removed: 410 here, 404 there), and 3.3 (auth on by default)
    NacosConfig("3.1.0", NACOS3_VERSION, v1=False),
    NacosConfig("3.1.0-auth", NACOS3_VERSION, auth=True, v1=False),
    # 3.0/3.1 as shipped: both APIs (auto must still pick v3; v1 when asked, with push)
    NacosConfig("3.1.0-v1", NACOS3_VERSION),
)}


def wanted_configs() -> list[str]:
    """The configurations this run starts together (``MSRPC_NACOS_CONFIGS``, comma list)."""
    names = [n.strip() for n in os.environ.get("MSRPC_NACOS_CONFIGS", "").split(",")
             if n.strip()]
    return names or list(CONFIGS)

#: JVM and Spring flags for a quick standalone start on loopback.  Tomcat binds only to
#: 127.0.0.1; Nacos's gRPC (port+1000, +1001) and Raft (port-1000) ports bind all interfaces
#: and have no option to do otherwise, so nothing but loopback is ever contacted.
JVM_FLAGS = [
    "-Xms256m", "-Xmx512m", "-Xss512k",
    "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-XX:-UsePerfData",
    "-Djava.security.egd=file:/dev/./urandom",
    "-Dnacos.standalone=true",
    f"-Dserver.address={HOST}",
    f"-Dnacos.inetutils.ip-address={HOST}",
    "-Dnacos.istio.mcp.server.enabled=false",
    # Derby's login timeout (3 s by default) fails the start on a busy machine
    "-Ddb.pool.config.connectionTimeout=60000",
]

START_TIMEOUT = 240.0
#: Starts tried when a port turns out taken.
PORT_ATTEMPTS = 3
STOP_TIMEOUT = 30.0

#: Nacos honours these instance metadata keys (verified): beats every second, unhealthy after
#: 3 s and deleted after 6 s without one, instead of 5 s / 15 s / 30 s.
SHORT_TIMEOUTS = {"preserved.heart.beat.interval": "1000",
                  "preserved.heart.beat.timeout": "3000",
                  "preserved.ip.delete.timeout": "6000"}


def nacos_dir(version: str = NACOS_VERSION) -> Path:
    return SERVERS_DIR / f"nacos-{version}"


def installed(version: str = NACOS_VERSION) -> bool:
    return (nacos_dir(version) / "classpath.txt").is_file() and shutil.which("java") is not None


def require_nacos(version: str = NACOS_VERSION) -> None:
    """Skip (or fail under CI) when Nacos is not installed."""
    if not installed(version):
        server_unavailable(f"Nacos {version} not installed in {nacos_dir(version)} "
                           "(run scripts/install-nacos)")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("", port))  # the gRPC and Raft ports bind every interface
        except OSError:
            return False
    return True


#: Every port this process gave a Nacos (with its companions): servers starting together
#: must not pick each other's.
_CHOSEN: set[int] = set()


def _companions(port: int) -> set[int]:
    return {port, port - 1000, port + 1000, port + 1001}


def nacos_port() -> int:
    """A free HTTP port whose Raft (-1000) and gRPC (+1000, +1001) companions are free too."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((HOST, 0))
            port = s.getsockname()[1]
        if not 2024 <= port <= 64000 or _companions(port) & _CHOSEN:
            continue
        if all(_port_free(p) for p in _companions(port)):
            _CHOSEN.update(_companions(port))
            return port
    raise RuntimeError("no free port with free port-1000, port+1000 and port+1001")


class _PortTaken(RuntimeError):
    """The server could not bind one of its ports: something took it since we chose it."""


# --------------------------------------------------------------------------- plain HTTP


class HTTPResult:
    """Status, headers and body of one blocking request (for fixtures and direct checks)."""

    def __init__(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.status = status
        self.body = body
        self.headers = headers

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<HTTPResult {self.status} {self.text[:200]!r}>"


def http_blocking(method: str, url: str, params: Optional[dict[str, Any]] = None,
                  timeout: float = 5.0) -> HTTPResult:
    """One HTTP request with urllib; form-encodes ``params`` (query for GET/DELETE)."""
    data = None
    if params:
        encoded = urllib.parse.urlencode(params)
        if method in ("GET", "DELETE"):
            url = f"{url}?{encoded}"
        else:
            data = encoded.encode()
    request = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return HTTPResult(response.status, response.read(), dict(response.headers))
    except urllib.error.HTTPError as e:
        return HTTPResult(e.code, e.read(), dict(e.headers))


def http(method: str, url: str, params: Optional[dict[str, Any]] = None,
         timeout: float = 5.0) -> "defer.Deferred[HTTPResult]":
    """``http_blocking`` in the reactor's thread pool."""
    return threads.deferToThread(http_blocking, method, url, params, timeout)


# --------------------------------------------------------------------------- the server


class _Exit(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.ended: defer.Deferred[None] = defer.Deferred()

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(None)


_LIVE: set["NacosServer"] = set()


_HOMES: list[Path] = []


def _kill_all() -> None:
    """At exit: no server outlives the tests, and no home is left (MSRPC_KEEP_NACOS_HOME)."""
    for server in list(_LIVE):
        server._signal(signal.SIGKILL)
    if not os.environ.get("MSRPC_KEEP_NACOS_HOME"):
        for home in _HOMES:
            shutil.rmtree(home, ignore_errors=True)


atexit.register(_kill_all)


class NacosServer:
    """One standalone Nacos process; ``url`` is ``http://127.0.0.1:<port>`` (no context)."""

    def __init__(self, reactor: Any, *, auth: bool = False, version: str = NACOS_VERSION,
                 port: Optional[int] = None, extra_flags: tuple[str, ...] = (),
                 v1: bool = True, config: Optional[NacosConfig] = None) -> None:
        if config is not None:
            auth, version, v1 = config.auth, config.version, config.v1
        self.config = config or NacosConfig(f"{version}{'-auth' if auth else ''}", version,
                                            auth=auth, v1=v1)
        self.reactor = reactor
        self.auth = auth
        self.version = version
        self.v1 = v1
        self.major = self.config.major
        self.port = port or nacos_port()
        self.extra_flags = extra_flags
        self.home = Path(tempfile.mkdtemp(prefix=f"msrpc-nacos-{self.port}-"))
        _HOMES.append(self.home)
        self.log_path = self.home / "nacos.out.log"
        self.username = ADMIN_USER
        self.password = ADMIN_PASSWORD
        # Per server: the secret signs tokens, the identity lets cluster members in.
        self.token_secret = base64.b64encode(os.urandom(32)).decode()
        self.identity = ("msrpc-test", base64.b16encode(os.urandom(8)).decode())
        self.started_at: Optional[float] = None
        self.startup_seconds: Optional[float] = None
        self._pid: Optional[int] = None
        self._exit: Optional[_Exit] = None

    # ------------------------------------------------------------------ addresses

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def api(self) -> str:
        """Base of the HTTP API: ``url`` plus Nacos's context path."""
        return self.url + CONTEXT

    @property
    def running(self) -> bool:
        return self._pid is not None

    # ------------------------------------------------------------------ lifecycle

    def command(self) -> list[str]:
        root = nacos_dir(self.version)
        classpath = ":".join(str(root / p) for p in
                             (root / "classpath.txt").read_text().strip().split(":"))
        main_file = root / "main-class"
        main = main_file.read_text().strip() if main_file.is_file() else "com.alibaba.nacos.Nacos"
        flags = JVM_FLAGS + [f"-Dnacos.home={self.home}", f"-Dserver.port={self.port}"]
        if self.major >= 3:
            flags += [f"-Dnacos.server.main.port={self.port}", "-Dnacos.deployment.type=server",
                      f"-Dnacos.core.api.compatibility.client.enabled={str(self.v1).lower()}",
                      # 3.3 turns auth on when this is absent: say it
                      f"-Dnacos.core.auth.enabled={str(self.auth).lower()}"]
        if self.auth or self.major >= 3:  # 3.x guards its admin API even with auth off
            flags += [
                "-Dnacos.core.auth.system.type=nacos",
                f"-Dnacos.core.auth.plugin.nacos.token.secret.key={self.token_secret}",
                f"-Dnacos.core.auth.server.identity.key={self.identity[0]}",
                f"-Dnacos.core.auth.server.identity.value={self.identity[1]}",
                # read users from the database on each login: no 5-15 s cache warm-up
                "-Dnacos.core.auth.caching.enabled=false",
            ]
        if self.auth and self.major < 3:
            flags.append("-Dnacos.core.auth.enabled=true")
        java = [shutil.which("java") or "java", *flags, *self.extra_flags,
                "-cp", classpath, main]
        setpriv = shutil.which("setpriv")
        if setpriv:  # SIGKILL the server if this test process dies without running atexit
            return [setpriv, "--pdeathsig", "KILL", "--", *java]
        return java

    def start(self) -> "defer.Deferred[NacosServer]":
        """
        Spawn the server and wait until it answers (and, with auth, accepts a login).  A
        port taken since it was chosen (by the time a JVM binds it, 30 s later on a busy
        machine) means new ports, or, once the server has run (clients know its URL),
        another try on the same ones.
        """
        require_nacos(self.version)
        if self.running:
            raise RuntimeError(f"Nacos on port {self.port} is already running")

        async def start() -> NacosServer:
            for attempt in range(1, PORT_ATTEMPTS + 1):
                self._spawn()
                try:
                    return await self._wait_ready()
                except _PortTaken:
                    if attempt == PORT_ATTEMPTS:
                        raise
                if self.startup_seconds is None:
                    self.port = nacos_port()
                else:
                    await task.deferLater(self.reactor, 1.0, lambda: None)
            raise AssertionError("unreachable")  # pragma: no cover

        return defer.Deferred.fromCoroutine(start())

    def _spawn(self) -> None:
        args = self.command()
        # No pipes: the child writes to the log file, so nothing of it lives in the reactor.
        with open(self.log_path, "ab") as log, open(os.devnull, "rb") as null:
            log.write(f"\n=== starting: {' '.join(args)}\n".encode())
            log.flush()
            self._exit = _Exit()
            process = self.reactor.spawnProcess(
                self._exit, args[0], args, env=dict(os.environ), path=str(self.home),
                childFDs={0: null.fileno(), 1: log.fileno(), 2: log.fileno()})
        self._pid = process.pid
        _LIVE.add(self)
        self._exit.ended.addBoth(self._ended)
        self.started_at = self.reactor.seconds()

    def _ended(self, result: Any) -> Any:
        self._pid = None
        _LIVE.discard(self)
        return result

    async def _ready_check(self) -> bool:
        path = "/v3/admin/core/state/readiness" if self.major >= 3 \
            else "/v1/console/health/readiness"
        result = await http("GET", self.api + path, timeout=2)
        if result.status != 200:
            return False
        if self.auth or self.major >= 3:
            await self._ensure_admin()
            login = await self.login()
            return login.status == 200
        return True

    async def _wait_ready(self) -> "NacosServer":
        """Poll until ready; fail at once if the process exits (a port taken: _PortTaken)."""
        deadline = self.reactor.seconds() + START_TIMEOUT
        last_error: Optional[BaseException] = None
        while True:
            if not self.running:
                tail = self.log_tail()
                error = _PortTaken if "Address already in use" in tail else RuntimeError
                raise error(f"Nacos on port {self.port} exited during startup; log "
                            f"({self.log_path}):\n{tail}")
            try:
                if await self._ready_check():
                    break
            except Exception as e:  # still starting: refused, reset, 503...
                last_error = e
            if self.reactor.seconds() >= deadline:
                await self.kill()
                raise RuntimeError(f"Nacos on port {self.port} not ready after "
                                   f"{START_TIMEOUT:.0f}s (last error: {last_error!r}); log "
                                   f"({self.log_path}):\n{self.log_tail()}")
            await task.deferLater(self.reactor, 0.1, lambda: None)
        assert self.started_at is not None
        self.startup_seconds = self.reactor.seconds() - self.started_at
        return self

    async def _ensure_admin(self) -> None:
        """Nacos 2.4+ starts without an admin password: set ours (2.3 answers 404)."""
        path = "/v3/auth/user/admin" if self.major >= 3 else "/v1/auth/users/admin"
        await http("POST", self.api + path, {"password": self.password})

    def login(self, username: Optional[str] = None, password: Optional[str] = None
              ) -> "defer.Deferred[HTTPResult]":
        # 3.x's /v1/auth/login is a client API: 410 while that switch is off
        path = "/v3/auth/user/login" if self.major >= 3 else "/v1/auth/login"
        return http("POST", self.api + path,
                    {"username": username or self.username,
                     "password": self.password if password is None else password})

    def _signal(self, signum: int) -> None:
        if self._pid is not None:
            try:
                os.kill(self._pid, signum)
            except ProcessLookupError:
                pass

    def _wait_exit(self, timeout: float) -> "defer.Deferred[None]":
        if self._exit is None or self._exit.ended.called:
            return defer.succeed(None)
        waiter: defer.Deferred[None] = defer.Deferred()

        def exited(result: Any) -> Any:
            if not waiter.called:
                waiter.callback(None)
            return result

        self._exit.ended.addBoth(exited)
        waiter.addTimeout(timeout, self.reactor)
        return waiter

    def stop(self) -> "defer.Deferred[None]":
        """SIGTERM (Nacos shuts down cleanly), then SIGKILL if it takes too long."""
        if not self.running:
            return defer.succeed(None)
        self._signal(signal.SIGTERM)

        def too_slow(failure: Failure) -> "defer.Deferred[None]":
            failure.trap(defer.TimeoutError)
            return self.kill()

        return self._wait_exit(STOP_TIMEOUT).addErrback(too_slow)

    def kill(self) -> "defer.Deferred[None]":
        """SIGKILL: the server dies as in a crash, without deregistering anything."""
        if not self.running:
            return defer.succeed(None)
        self._signal(signal.SIGKILL)
        return self._wait_exit(STOP_TIMEOUT)

    def restart(self) -> "defer.Deferred[NacosServer]":
        """Stop and start again on the same ports and home (ephemeral instances are lost)."""
        return self.stop().addCallback(lambda _: self.start())

    def cleanup(self) -> "defer.Deferred[None]":
        """Kill the server and remove its home (keeps the home if it is needed for a log)."""
        def remove(_: Any) -> None:
            shutil.rmtree(self.home, ignore_errors=True)
        return self.kill().addCallback(remove)

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # ------------------------------------------------------------------ direct API access

    def token_params(self, token: Optional[str]) -> dict[str, str]:
        return {"accessToken": token} if token else {}

    async def admin_token(self) -> Optional[str]:
        if not self.auth:
            return None
        result = await self.login()
        if result.status != 200:
            raise RuntimeError(f"admin login failed: {result!r}")
        return str(result.json()["accessToken"])

    async def instances(self, service: str, groupName: str = "DEFAULT_GROUP",
                        clusters: Sequence[str] = ("DEFAULT",),
                        healthy_only: bool = False) -> list[dict[str, Any]]:
        """
        Nacos's own instance list (healthy or not, unless ``healthy_only``), without our
        adapter: v1's (every cluster) where v1 is on, else the v3 client API's (of
        ``clusters``; it cannot list all).
        """
        token = self.token_params(await self.admin_token())
        if self.v1:
            result = await http("GET", self.api + "/v1/ns/instance/list", {
                "serviceName": service, "groupName": groupName, **token})
            if result.status != 200:
                raise RuntimeError(f"instance list failed: {result!r}")
            hosts = list(result.json()["hosts"])
        else:
            result = await http("GET", self.api + "/v3/client/ns/instance/list", {
                "serviceName": service, "groupName": groupName,
                "clusterName": ",".join(clusters), **token})
            if result.status != 200 or result.json().get("code") != 0:
                raise RuntimeError(f"instance list failed: {result!r}")
            hosts = list(result.json()["data"])
        return [h for h in hosts if h.get("healthy") or not healthy_only]

    def __repr__(self) -> str:
        state = f"pid {self._pid}" if self.running else "stopped"
        return f"<NacosServer {self.config.name} {self.url} {state}>"


class _StartFailed:
    """A shared server's failed start, kept as a value: it may wait for its first user."""

    def __init__(self, failure: Failure) -> None:
        self.failure = failure


_SHARED: dict[str, "defer.Deferred[NacosServer | _StartFailed]"] = {}


def _start_shared(reactor: Any, name: str) -> "defer.Deferred[NacosServer | _StartFailed]":
    existing = _SHARED.get(name)
    if existing is not None and existing.called:
        result = getattr(existing, "result", None)
        if not isinstance(result, NacosServer) or not result.running:
            existing = None  # it failed to start or died: try a fresh one
    if existing is None:
        started: defer.Deferred[Any] = NacosServer(reactor, config=CONFIGS[name]).start()
        existing = started.addErrback(_StartFailed)
        _SHARED[name] = existing
    return existing


def shared_nacos(reactor: Any, auth: bool = False, config: Optional[str] = None
                 ) -> "defer.Deferred[NacosServer]":
    """
    The process-wide server of a configuration (``config``, default 2.3.2 with or without
    ``auth``), started on first use and killed at exit.  The first call starts every
    configuration of the run, in parallel (the JVMs boot together instead of one per test
    class), and waits for all of them: nothing of a start may outlive the test that caused
    it (trial cancels what a test leaves behind).  Tests may restart a shared server but
    must not stop it.
    """
    name = config or ("2.3.2-auth" if auth else "2.3.2")
    require_nacos(CONFIGS[name].version)
    names = [name]
    if not _SHARED:
        names += [other for other in wanted_configs()
                  if other != name and installed(CONFIGS[other].version)]
    out: defer.Deferred[NacosServer] = defer.Deferred()

    def relay(results: list[tuple[bool, Any]]) -> None:
        result = results[0][1]
        if isinstance(result, _StartFailed):
            out.errback(result.failure)
        else:
            out.callback(result)

    defer.DeferredList([_start_shared(reactor, n) for n in names]).addCallback(relay)
    return out


__all__ = ["NACOS_VERSION", "NACOS3_VERSION", "SHORT_TIMEOUTS", "NacosConfig", "CONFIGS",
           "NacosServer", "shared_nacos", "require_nacos", "installed", "nacos_port", "http",
           "http_blocking", "HTTPResult", "ADMIN_USER", "ADMIN_PASSWORD"]
