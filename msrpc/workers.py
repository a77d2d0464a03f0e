"""
``twistd msrpc --workers N``: N server processes behind one address, supervised, published
once.

The ``twistd`` process becomes the supervisor.  It owns the address: on Linux it reserves
the port with a bound ``SO_REUSEPORT`` socket and each worker binds its own listening
socket to the same port, so the kernel spreads new connections evenly over the workers;
elsewhere, and for Unix sockets, it listens itself and hands that one socket to every
worker (``adoptStreamPort``).  Each worker is an ordinary msrpc server process
(``python -m twisted msrpc`` with the same options) that serves on that address and
registers nothing; when it listens it reports what it would publish on a pipe.  The
supervisor publishes that, once, for the whole set (one instance: one host:port), and
restarts a worker that dies with a backoff (0.5 s doubling to 30 s; back to 0.5 s after a
worker ran 10 s).

Stopping the supervisor follows the single-process order: deregister, wait ``--grace``,
then SIGTERM every worker, each of which drains its calls (``--drain-timeout``) and exits;
a worker still running ``--drain-timeout`` + 5 s later is killed.  A second SIGTERM is
passed on (the workers stop draining).  Workers ignore SIGINT (a Ctrl-C reaches the whole
process group: only the supervisor decides the order) and stop by themselves, gracefully,
if the supervisor is gone (their stdin, a pipe from it, reaches end of file).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from twisted.application import reactors
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import AdoptedStreamServerEndpoint
from twisted.internet.error import ProcessDone
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger, LogLevel, eventFromJSON, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer

from msrpc.registry.instance import ServiceInstance
from msrpc.server import Server

log = Logger()

#: Environment variable that makes a ``twistd msrpc`` process a worker (JSON: its socket).
WORKER_ENV = "MSRPC_WORKER"
#: The worker's end of the pipe it reports on (written by the worker).
CONTROL_FD = 3
#: The listening socket a worker inherits, when it does not bind its own.
SOCKET_FD = 4
RESTART_INITIAL = 0.5
RESTART_MAX = 30.0
#: A worker that ran this long before dying is restarted after RESTART_INITIAL again.
STABLE_AFTER = 10.0
#: How much longer than its drain a stopping worker gets before SIGKILL.
KILL_MARGIN = 5.0


def reuse_port_spreads() -> bool:
    """Whether ``SO_REUSEPORT`` spreads connections over the sockets sharing a port (on
    the BSDs and macOS it exists but hands every connection to one socket)."""
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


# ------------------------------------------------------------------------ the address


@dataclass(frozen=True)
class ListenAddress:
    """Where the workers serve, read from a ``tcp:``, ``tcp6:`` or ``unix:`` endpoint."""

    family: int
    host: str  # the interface, or the socket's path for AF_UNIX
    port: int = 0
    backlog: int = 50
    mode: int = 0o666  # AF_UNIX only

    @classmethod
    def parse(cls, description: str) -> "ListenAddress":
        kind, args, kwargs = _split_endpoint(description)
        backlog = int(kwargs.get("backlog", 50))
        if kind in ("tcp", "tcp6"):
            port = int(kwargs.get("port", args[0] if args else ""))
            family = socket.AF_INET6 if kind == "tcp6" else socket.AF_INET
            interface = kwargs.get("interface", args[1] if len(args) > 1 else
                                   ("::" if kind == "tcp6" else ""))
            return cls(family, interface, port, backlog)
        if kind == "unix":
            path = kwargs.get("address", args[0] if args else "")
            if not path:
                raise ValueError("unix: needs a path")
            return cls(socket.AF_UNIX, path, 0, backlog, int(kwargs.get("mode", "666"), 8))
        raise ValueError(f"--workers serves tcp:, tcp6: or unix: endpoints, not {kind}: "
                         "(for TLS, use tcp: with --tls-cert and --tls-key)")

    def new_socket(self) -> socket.socket:
        sock = socket.socket(self.family, socket.SOCK_STREAM)
        if self.family != socket.AF_UNIX:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        return sock


def _split_endpoint(description: str) -> tuple[str, list[str], dict[str, str]]:
    """``kind:arg:key=value`` with ``\\:`` escapes, as Twisted's endpoint strings."""
    parts, current, escaped = [], "", False
    for char in description:
        if escaped:
            current += char
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    kind, args, kwargs = parts[0].strip().lower(), [], {}
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        if sep:
            kwargs[key] = value
        else:
            args.append(part)
    return kind, args, kwargs


class Listening:
    """
    The supervisor's hold on the address, from start to stop: a bound ``SO_REUSEPORT``
    socket that keeps the port (workers bind their own), or the one listening socket the
    workers inherit.
    """

    def __init__(self, address: ListenAddress, reuse_port: bool) -> None:
        self.address = address
        self.reuse_port = reuse_port and address.family != socket.AF_UNIX
        sock = address.new_socket()
        try:
            if self.reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if address.family == socket.AF_UNIX:
                sock.bind(address.host)
                os.chmod(address.host, address.mode)
            else:
                sock.bind((address.host, address.port))
            if not self.reuse_port:
                sock.listen(address.backlog)
        except BaseException:
            sock.close()
            raise
        self.socket = sock

    @property
    def host(self) -> Any:
        """The bound address, as a listening port's ``getHost`` gives it."""
        if self.address.family == socket.AF_UNIX:
            return UNIXAddress(self.address.host)
        host, port = self.socket.getsockname()[:2]
        kind = IPv6Address if self.address.family == socket.AF_INET6 else IPv4Address
        return kind("TCP", host, port)

    def worker_spec(self) -> dict[str, Any]:
        """What a worker needs to serve here (it travels in ``MSRPC_WORKER``)."""
        if not self.reuse_port:
            return {"socket": "inherited", "family": int(self.address.family)}
        return {"socket": "reuseport", "family": int(self.address.family),
                "host": self.host.host, "port": self.host.port,
                "backlog": self.address.backlog}

    def child_fds(self) -> dict[int, Any]:
        fds: dict[int, Any] = {0: "w", 1: "r", 2: "r", CONTROL_FD: "r"}
        if not self.reuse_port:
            fds[SOCKET_FD] = self.socket.fileno()
        return fds

    def close(self) -> None:
        self.socket.close()
        if self.address.family == socket.AF_UNIX:
            try:
                os.unlink(self.address.host)
            except OSError:
                pass


# ------------------------------------------------------------------------ the worker side


@implementer(IStreamServerEndpoint)
class WorkerEndpoint:
    """A worker's listening endpoint: its own ``SO_REUSEPORT`` socket on the supervisor's
    port, or the socket it inherited."""

    def __init__(self, reactor: Any, spec: dict[str, Any]) -> None:
        self.reactor = reactor
        self.spec = spec

    def listen(self, factory: Any) -> "Deferred[IListeningPort]":
        family = self.spec["family"]
        if self.spec["socket"] == "inherited":
            return AdoptedStreamServerEndpoint(self.reactor, SOCKET_FD, family).listen(factory)
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((self.spec["host"], self.spec["port"]))
            sock.listen(self.spec["backlog"])
        except OSError:
            sock.close()
            return defer.fail()
        return AdoptedStreamServerEndpoint(self.reactor, sock.detach(), family).listen(factory)

    def __repr__(self) -> str:
        return f"<worker socket {self.spec}>"


def worker_spec() -> Optional[dict[str, Any]]:
    """This process's worker settings when a supervisor started it, else None.  Read
    once: the variable is removed so that processes the services start are not workers."""
    text = os.environ.pop(WORKER_ENV, None)
    return json.loads(text) if text else None


def report_ready(server: Server, control_fd: int = CONTROL_FD) -> None:
    """Tell the supervisor this worker listens, and what it would publish."""
    message = {"pid": os.getpid(),
               "instances": [instance.to_dict() for instance in server.instances()]}
    with os.fdopen(control_fd, "w") as control:
        control.write(json.dumps(message) + "\n")


def ignore_interrupts(reactor: Any) -> None:
    """Once the reactor has installed its handlers: SIGINT is for the supervisor."""
    reactor.addSystemEventTrigger("after", "startup", signal.signal, signal.SIGINT,
                                  signal.SIG_IGN)


def stop_when_orphaned(reactor: Any, fd: int = 0) -> None:
    """Stop gracefully when ``fd`` (a pipe the supervisor holds open) reaches its end:
    a worker must not go on serving unsupervised and unpublished."""

    def watch() -> None:
        try:
            while os.read(fd, 4096):
                pass
        except OSError:
            pass
        reactor.callFromThread(_stop_if_running, reactor)

    threading.Thread(target=watch, name="msrpc-supervisor-watch", daemon=True).start()


def _stop_if_running(reactor: Any) -> None:
    if reactor.running:
        log.warn("the supervisor is gone: stopping")
        reactor.stop()


# ------------------------------------------------------------------------ the supervisor


def worker_command(argv: Sequence[str], reactor_name: Optional[str] = None) -> list[str]:
    """``python -m twisted msrpc ARGV --workers=1``, with the supervisor's reactor, JSON
    logs on stdout (the supervisor relays them)."""
    command = [sys.executable, "-m", "twisted", "--log-format=json", "--log-file=-"]
    if reactor_name is not None:
        command.append(f"--reactor={reactor_name}")
    return command + ["msrpc", *argv, "--workers=1"]


def reactor_name(options: Any, reactor: Any) -> Optional[str]:
    """The short name (``epoll``, ``asyncio``, ``uvloop``...) of the reactor: the one
    ``twistd --reactor`` or ``twist --reactor`` installed, else the installed reactor's."""
    parent = getattr(options, "parent", None)
    if parent is not None:
        for key in ("reactor", "reactorName"):  # twistd's option, twist's
            chosen = parent.get(key) if hasattr(parent, "get") else None
            if isinstance(chosen, str):
                return chosen
    module = type(reactor).__module__
    for installable in reactors.getReactorTypes():
        if getattr(installable, "moduleName", None) == module:
            return str(installable.shortName)
    return None


class _Worker(ProcessProtocol):
    """One worker process: relays its logs, reads its report, tells the pool it ended."""

    def __init__(self, pool: "WorkerPool", index: int) -> None:
        self.pool = pool
        self.index = index
        self.pid: Optional[int] = None
        self.started_at = pool.clock.seconds()
        self.report: Optional[dict[str, Any]] = None
        self.ended = False
        self._buffers: dict[int, bytes] = {}

    transport: Any

    def connectionMade(self) -> None:
        self.pid = self.transport.pid

    def childDataReceived(self, fd: int, data: bytes) -> None:
        buffered = self._buffers.get(fd, b"") + data
        *lines, self._buffers[fd] = buffered.split(b"\n")
        for line in lines:
            self._line(fd, line)

    def _line(self, fd: int, line: bytes) -> None:
        text = line.decode("utf-8", "replace").strip("\x1e\r")
        if not text:
            return
        if fd == CONTROL_FD:
            try:
                report = json.loads(text)
            except ValueError:
                log.warn("worker {index}: unreadable report {text!r}", index=self.index,
                         text=text)
                return
            self.report = report
            self.pool.ready(self)
        else:
            relay(self.index, text, error=fd == 2)

    def childConnectionLost(self, fd: int) -> None:
        rest = self._buffers.pop(fd, b"")
        if rest:
            self._line(fd, rest)

    def processEnded(self, reason: Failure) -> None:
        self.ended = True
        for fd in list(self._buffers):
            self.childConnectionLost(fd)
        self.pool.ended(self, reason)

    def signal(self, name: str) -> None:
        if not self.ended:
            try:
                self.transport.signalProcess(name)
            except Exception:  # already gone: processEnded is on its way
                pass


def relay(index: int, text: str, error: bool = False) -> None:
    """One line of a worker's output into the supervisor's log: its log events keep their
    level, time and fields (tagged ``worker``); anything else is logged as a line."""
    event: Optional[dict[str, Any]] = None
    if text.startswith("{"):
        try:
            event = eventFromJSON(text)
        except ValueError:
            event = None
    if event is None:
        log.emit(LogLevel.warn if error else LogLevel.info, "[worker {worker}] {line}",
                 worker=index, line=text)
        return
    event["worker"] = index
    event["log_format"] = "[worker {worker}] " + str(event.get("log_format") or "")
    flattened = event.get("log_flattened")
    if isinstance(flattened, dict):
        flattened["worker!s:"] = str(index)  # the key flatFormat looks up for {worker}
    globalLogPublisher(event)


def describe_exit(reason: Failure) -> str:
    """``exited``, ``exited with status 3``, ``was killed by SIGKILL``..."""
    value = reason.value
    if reason.check(ProcessDone):
        return "exited"
    signum = getattr(value, "signal", None)
    if signum is not None:
        try:
            return f"ended on {signal.Signals(signum).name}"
        except ValueError:
            return f"ended on signal {signum}"
    code = getattr(value, "exitCode", None)
    return f"exited with status {code}" if code is not None else f"ended: {value}"


class WorkerPool:
    """
    Starts ``count`` workers on ``listening``, restarts any that dies (with a backoff),
    and stops them all gracefully.  ``start`` fires once every worker has reported that
    it listens, and fails if one dies before it ever did (a broken service module, a port
    it cannot bind): then the others are stopped too.
    """

    def __init__(self, reactor: Any, address: ListenAddress, command: Sequence[str],
                 count: int, kill_timeout: float, reuse_port: bool = True,
                 env: Optional[dict[str, str]] = None) -> None:
        self.reactor = reactor
        self.clock = reactor
        self.address = address
        self.reuse_port = reuse_port
        self._listening: Optional[Listening] = None
        self.command = list(command)
        self.count = count
        self.kill_timeout = kill_timeout
        self.env = dict(os.environ if env is None else env)
        self.workers: dict[int, _Worker] = {}
        #: What the workers report they publish (all report the same).
        self.instances: list[ServiceInstance] = []
        self.restarts = 0
        self._delays = {index: RESTART_INITIAL for index in range(count)}
        self._restart_calls: dict[int, Any] = {}
        self._starting: Optional[Deferred[None]] = None
        self._stopped: Optional[Deferred[None]] = None
        self._kill_call: Any = None
        self.stopping = False

    @property
    def listening(self) -> Listening:
        if self._listening is None:
            raise RuntimeError("the worker pool has not started")
        return self._listening

    # -- lifecycle
    def start(self) -> "Deferred[None]":
        try:
            self._listening = Listening(self.address, self.reuse_port)
        except OSError:
            return defer.fail()
        self._starting = Deferred()
        for index in range(self.count):
            self._spawn(index)
        return self._starting

    def _spawn(self, index: int) -> None:
        self._restart_calls.pop(index, None)
        worker = _Worker(self, index)
        env = dict(self.env)
        env[WORKER_ENV] = json.dumps(self.listening.worker_spec())
        self.workers[index] = worker
        self.reactor.spawnProcess(worker, self.command[0], self.command, env=env,
                                  childFDs=self.listening.child_fds())
        log.info("worker {index} started (pid {pid})", index=index, pid=worker.pid)

    def ready(self, worker: _Worker) -> None:
        report = worker.report or {}
        self.instances = [ServiceInstance.from_dict(i) for i in report.get("instances", [])]
        starting = self._starting
        if starting is not None and not starting.called and \
                all(w.report is not None for w in self.workers.values()) and \
                len(self.workers) == self.count:
            starting.callback(None)

    def ended(self, worker: _Worker, reason: Failure) -> None:
        if self.workers.get(worker.index) is worker:
            del self.workers[worker.index]
        how = describe_exit(reason)
        if self.stopping:
            log.info("worker {index} (pid {pid}) stopped", index=worker.index,
                     pid=worker.pid)
            self._maybe_stopped()
            return
        starting = self._starting
        if worker.report is None and starting is not None and not starting.called:
            log.error("worker {index} (pid {pid}) {how} before it listened: stopping",
                      index=worker.index, pid=worker.pid, how=how)
            starting.errback(RuntimeError(f"worker {worker.index} {how} before it "
                                          "listened; its log says why"))
            self.stop()
            return
        index = worker.index
        ran = self.clock.seconds() - worker.started_at
        delay = RESTART_INITIAL if ran >= STABLE_AFTER else self._delays[index]
        self._delays[index] = min(delay * 2, RESTART_MAX)
        self.restarts += 1
        log.warn("worker {index} (pid {pid}) {how} after {ran:.1f}s; restarting it in "
                 "{delay:g}s", index=index, pid=worker.pid, how=how, ran=ran, delay=delay)
        self._restart_calls[index] = self.clock.callLater(delay, self._spawn, index)

    def stop(self) -> "Deferred[None]":
        """SIGTERM every worker (each drains, then exits); SIGKILL what is left after
        ``kill_timeout``.  Fires once all have exited."""
        if self._stopped is None:
            self._stopped = Deferred()
            self.stopping = True
            for call in self._restart_calls.values():
                if call.active():
                    call.cancel()
            self._restart_calls.clear()
            for worker in list(self.workers.values()):
                worker.signal("TERM")
            self._kill_call = self.clock.callLater(self.kill_timeout, self._kill)
            self._maybe_stopped()
        return self._stopped

    def hurry(self) -> None:
        """A second SIGTERM: the workers stop draining."""
        for worker in list(self.workers.values()):
            worker.signal("TERM")

    def _kill(self) -> None:
        self._kill_call = None
        for worker in list(self.workers.values()):
            log.warn("worker {index} (pid {pid}) still running {timeout:g}s after "
                     "SIGTERM: killing it", index=worker.index, pid=worker.pid,
                     timeout=self.kill_timeout)
            worker.signal("KILL")

    def _maybe_stopped(self) -> None:
        if self.workers or self._stopped is None or self._stopped.called:
            return
        if self._kill_call is not None and self._kill_call.active():
            self._kill_call.cancel()
        self._kill_call = None
        if self._listening is not None:
            self._listening.close()
        self._stopped.callback(None)


# ------------------------------------------------------------------------ publishing


@implementer(IListeningPort)
class _WorkersPort:
    """The workers seen as the supervisor server's listening port."""

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool

    def startListening(self) -> None:
        pass

    def stopListening(self) -> "Deferred[None]":
        return self.pool.stop()

    def getHost(self) -> Any:
        return self.pool.listening.host


@implementer(IStreamServerEndpoint)
class _WorkersEndpoint:
    def __init__(self, supervisor: "Supervisor") -> None:
        self.supervisor = supervisor

    def listen(self, factory: Any) -> "Deferred[IListeningPort]":
        return Deferred.fromCoroutine(self.supervisor._start_workers())

    def __repr__(self) -> str:
        pool = self.supervisor.pool
        return f"<{pool.count} workers on {pool.address.host}:{pool.address.port}>"


class Supervisor(Server):
    """
    The supervisor's server: it serves nothing itself.  Its "port" is the worker pool
    (listening once every worker listens; stopping it stops and drains every worker), and
    it publishes what the workers report, so registration, retries, the grace period and
    the stop order are exactly those of a single-process server.
    """

    def __init__(self, reactor: Any, pool: WorkerPool, **kwargs: Any) -> None:
        # It answers no calls, so no msrpc.health either: each worker serves its own.
        super().__init__(reactor, _WorkersEndpoint(self), health=False, **kwargs)
        self.pool = pool

    async def _start_workers(self) -> IListeningPort:
        await self.pool.start()
        names = sorted({instance.service for instance in self.pool.instances})
        self.dispatcher.services = {name: None for name in names}  # for the log line
        log.info("{count} workers listening on {address}", count=self.pool.count,
                 address=self.pool.listening.host)
        return _WorkersPort(self.pool)

    def instances(self) -> list[ServiceInstance]:
        return list(self.pool.instances)

    def hurry(self) -> None:
        if self.running or self.hurried:
            return  # as Server.hurry: only a stop under way is hurried
        super().hurry()
        self.pool.hurry()
