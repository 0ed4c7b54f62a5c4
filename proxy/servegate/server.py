"""Running the gateway process(es): one event loop, or N workers sharing one port.

``--workers N`` starts N interpreter processes (``spawn``, so nothing is shared by
accident), each a complete gateway binding the same host and port with ``SO_REUSEPORT``:
the kernel spreads connections over them. The parent binds the port first without
listening (so port 0 resolves once), waits until every worker listens, then supervises:
SIGTERM or SIGINT is passed on and every worker drains; a worker that dies takes the
others down with exit status 1, for the process supervisor (Kubernetes) to restart.

Metrics are aggregated across workers with prometheus_client's multiprocess mode (one
directory of value files, created here). Rate limits are per worker unless they are in
Redis (``--redis-url``).

The drain, on SIGTERM (in every worker; times from the signal):

1. at once: ``/readyz`` answers 503 and every response says ``Connection: close``, so the
   load balancer (the endpoints controller, in Kubernetes) stops sending new connections
   and keep-alive clients reconnect elsewhere; everything is still answered;
2. after ``drain_delay`` (``--drain-delay``, long enough for the endpoint removal to
   reach every node): the listening socket closes, so new connections are refused; each
   client connection is closed once no request has used it for half a second (a client may
   send one more request on a connection whose response did not say ``Connection:
   close``: it is answered, and told);
3. requests and streams in flight run to their end, until ``grace_period``
   (``--grace-period``); then a stream still running ends with an error event and
   ``data: [DONE]``, and anything else left is cancelled (at most 1 s more);
4. the cleanup contexts run: the usage writer flushes its queue (at most 5 s), the
   upstream client closes; the process exits 0.

So the process is gone at most ``grace_period`` + about 7 s after SIGTERM: the pod's
``terminationGracePeriodSeconds`` must be larger (the operator renders 40; the default
grace period is 30). SIGINT (Ctrl-C) does the same without the delay. A second signal, a
second or more after the first, skips what is left of the delay and of the grace period.

TLS (``--tls-cert`` and ``--tls-key``, :class:`ServerTLS`): the port serves HTTPS only
(TLS 1.2 or newer; plain HTTP on it fails the handshake and the connection closes). The
directories holding the two files are watched for changes to them (``watchfiles``, not
recursively; with ``--no-watch``, not at all), and the files are re-read every 60 s in
case an event is missed. When their content changes, the new pair is checked on a scratch
context and then loaded into the serving one, so new connections present it at once and
connections already open keep theirs. A pair that cannot be used (half written, key and
certificate not matching) is logged and the previous one keeps serving. A Kubernetes
Secret volume (kubelet swaps its ``..data`` symlink) and certbot's ``live/`` symlinks
change in a watched directory too. With ``--workers``, each worker watches and reloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import re
import shutil
import signal
import socket
import ssl
import tempfile
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any, NoReturn

import watchfiles
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from prometheus_client import multiprocess

from servegate.app import GatewaySettings, create_app
from servegate.ingress.health import Drain, drain_key
from servegate.ingress.protocol import GatewayRunner
from servegate.logs import setup_logging
from servegate.streaming.relay import active_streams_key

log = logging.getLogger("servegate")

_READY_TIMEOUT_S = 60.0
_CANCEL_WAIT_S = 1.0
"""After the grace period: how long cancelled requests get to unwind."""
_LINGER_S = 0.5
"""While draining: how long a connection stays open after its last response."""
_POLL_S = 0.1
_EXIT_MARGIN_S = 10.0
"""How much longer than the grace period the parent waits for a worker to exit."""


class ListenError(OSError):
    """The gateway could not bind its address (in use, not permitted)."""


class TLSConfigError(Exception):
    """The TLS certificate or key cannot be served; the message says which file and why."""


_TLS_RECHECK_S = 60.0
"""Re-read the certificate and key this often even without a file event."""
_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)
_PEM_KEY = re.compile(rb"-----BEGIN (?:[A-Z0-9]+ )?PRIVATE KEY-----")
_PEM_ENCRYPTED = re.compile(rb"-----BEGIN ENCRYPTED PRIVATE KEY-----|Proc-Type: *4, *ENCRYPTED")


class ServerTLS:
    """The gateway's TLS server context (TLS 1.2+), whose certificate follows the files.

    ``SSLContext.load_cert_chain`` on the serving context applies to the handshakes that
    start afterwards. A failed load can leave a context without a usable key, so a new
    pair is read once, staged in a private temporary directory, loaded into a scratch
    context first and, only if that works, into the serving one (from the same bytes).
    Everything runs on the event loop's thread, where the handshakes run too.
    """

    def __init__(self, cert: Path, key: Path) -> None:
        self.cert = cert
        self.key = key
        self.context = _new_context()
        pem = self._read()
        self._install(pem)
        self._serving = pem
        self.fingerprint = _fingerprint(pem[0])
        """SHA-256 of the leaf certificate being served (hex)."""

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> ServerTLS | None:
        if settings.tls_cert is None and settings.tls_key is None:
            return None
        if settings.tls_cert is None or settings.tls_key is None:
            raise TLSConfigError("a TLS certificate and its key go together: give both")
        return cls(settings.tls_cert, settings.tls_key)

    def _read(self) -> tuple[bytes, bytes]:
        pem: list[bytes] = []
        for what, path in (("certificate", self.cert), ("key", self.key)):
            try:
                pem.append(path.read_bytes())
            except OSError as exc:
                raise TLSConfigError(
                    f"cannot read the TLS {what} {path}: {exc.strerror or exc}"
                ) from None
        return pem[0], pem[1]

    def _install(self, pem: tuple[bytes, bytes]) -> None:
        """Load ``pem`` into the serving context, or raise TLSConfigError and leave it be."""
        cert, key = pem
        if not _PEM_CERT.search(cert):
            raise TLSConfigError(
                f"{self.cert} holds no PEM certificate (a '-----BEGIN CERTIFICATE-----' block)"
            )
        if _PEM_ENCRYPTED.search(key):
            self._encrypted()
        if not _PEM_KEY.search(key):
            raise TLSConfigError(
                f"{self.key} holds no PEM private key (a '-----BEGIN PRIVATE KEY-----' block)"
            )

        def no_password() -> NoReturn:  # OpenSSL would prompt on the terminal instead
            self._encrypted()

        try:
            with _staged(cert, key) as (cert_path, key_path):
                _new_context().load_cert_chain(cert_path, key_path, password=no_password)
                self.context.load_cert_chain(cert_path, key_path, password=no_password)
        except ssl.SSLError as exc:
            if exc.reason == "KEY_VALUES_MISMATCH":
                raise TLSConfigError(
                    f"the private key {self.key} does not belong to the certificate {self.cert}"
                ) from None
            if exc.reason is None:  # "PEM lib": OpenSSL does not say which file
                raise TLSConfigError(f"{self._unparsable(cert)} (OpenSSL: {exc})") from None
            raise TLSConfigError(
                f"cannot serve TLS with the certificate {self.cert} and the key {self.key}: "
                f"{exc.reason}"
            ) from None
        except OSError as exc:
            raise TLSConfigError(
                f"cannot stage the TLS certificate and key in {tempfile.gettempdir()}: "
                f"{exc.strerror or exc}"
            ) from None

    def _unparsable(self, cert: bytes) -> str:
        """Which file OpenSSL could not parse: the certificates alone, or else the key."""
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(
                cadata=cert.decode("ascii")
            )
        except (ssl.SSLError, ValueError):
            return f"{self.cert} is not a valid PEM certificate chain"
        return f"{self.key} is not a valid PEM private key"

    def _encrypted(self) -> NoReturn:
        raise TLSConfigError(
            f"{self.key} holds an encrypted private key: the gateway needs it unencrypted "
            "(restrict who can read the file instead)"
        )

    def reload(self) -> bool:
        """Serve the files' current pair if it changed. True when a new pair is served;
        a pair that cannot be used is logged and the previous one keeps serving."""
        try:
            pem = self._read()
            if pem == self._serving:
                return False
            self._install(pem)
        except TLSConfigError as exc:
            log.error("TLS certificate not reloaded, still serving the previous one: %s", exc)
            return False
        self._serving = pem
        self.fingerprint = _fingerprint(pem[0])
        log.info("TLS certificate reloaded from %s (sha256 %s)", self.cert, self.fingerprint)
        return True

    def concerns(self, changed: Path) -> bool:
        """Whether a change in a watched directory may change the pair: one of the two
        names, or kubelet's ``..data`` swap (its entries start with ``..``)."""
        named = changed in {self.cert.absolute(), self.key.absolute()}
        return named or changed.name.startswith("..")

    async def watch(self, stop: asyncio.Event) -> None:
        """Reload when the files change, and every ``_TLS_RECHECK_S`` in any case.

        The directories holding them are watched (not the files: a rename replaces them),
        keeping the changes to the two names and to kubelet's ``..data`` swap (its
        ``..``-prefixed entries), so other files in the directory (a log) cause no reads.
        """
        roots = sorted({str(self.cert.absolute().parent), str(self.key.absolute().parent)})
        try:
            async for _changes in watchfiles.awatch(
                *roots,
                watch_filter=lambda _change, changed: self.concerns(Path(changed)),
                stop_event=stop,
                debounce=200,
                step=20,
                recursive=False,
                rust_timeout=int(_TLS_RECHECK_S * 1000),
                yield_on_timeout=True,
            ):
                self.reload()
        except Exception as exc:  # a watch that cannot start must not stop the gateway
            log.error(
                "cannot watch %s for certificate changes (%s): a new certificate needs a restart",
                ", ".join(roots),
                exc,
            )

    @contextlib.asynccontextmanager
    async def watching(self, enabled: bool) -> AsyncIterator[None]:
        if not enabled:
            yield
            return
        stop = asyncio.Event()
        task = asyncio.create_task(self.watch(stop), name="servegate-tls-watch")
        # The task's first step sets the watch up (watchfiles creates its notifier before
        # its first await); from here on no change is missed, and one that came between
        # the first load and now is served at once.
        await asyncio.sleep(0)
        self.reload()
        try:
            yield
        finally:
            stop.set()  # first: the watch thread returns at its next step, then the task ends
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _new_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])  # aiohttp's server speaks HTTP/1.1 only
    return context


@contextlib.contextmanager
def _staged(cert: bytes, key: bytes) -> Iterator[tuple[str, str]]:
    """``ssl`` loads certificates from files only: the pair in a private directory
    (``mkdtemp`` makes it owner-only; the files are 0600), removed right after."""
    with tempfile.TemporaryDirectory(prefix="servegate-tls-") as tmp:
        paths: list[str] = []
        for name, data in (("cert.pem", cert), ("key.pem", key)):
            path = os.path.join(tmp, name)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as file:
                file.write(data)
            paths.append(path)
        yield paths[0], paths[1]


def _fingerprint(cert: bytes) -> str:
    """SHA-256 of the first certificate of a PEM chain (the leaf), as ``openssl x509
    -fingerprint -sha256`` shows it without the colons."""
    match = _PEM_CERT.search(cert)
    assert match is not None  # _install checked it
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(match.group().decode("ascii"))).hexdigest()


def _show(host: str, port: int, scheme: str = "http") -> str:
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


async def run_gateway(
    settings: GatewaySettings,
    host: str,
    port: int,
    *,
    banner: str | None = None,
    reuse_port: bool = False,
    on_listening: Callable[[str], None] | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT, then drain (see the module docstring) and return."""
    signals = _Signals(asyncio.get_running_loop())  # first: a signal during startup counts
    try:
        tls = ServerTLS.from_settings(settings)  # before the config: a bad pair fails fast
        access = logging.getLogger("servegate.access")
        access.setLevel(logging.INFO if settings.access_log else logging.WARNING)
        app = create_app(settings)
        runner = GatewayRunner(
            app,
            access_log=None,
            shutdown_timeout=_CANCEL_WAIT_S,
            keepalive_timeout=settings.keepalive_timeout,
        )
        await runner.setup()
        site = web.TCPSite(
            runner,
            host,
            port,
            reuse_port=reuse_port,
            ssl_context=tls.context if tls is not None else None,
        )
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        tune_gc()
        bound_host, bound_port = runner.addresses[0][:2]
        url = _show(str(bound_host), int(bound_port), "http" if tls is None else "https")
        async with contextlib.AsyncExitStack() as stack:
            if tls is not None:  # watching before "listening": a change after it is seen
                await stack.enter_async_context(tls.watching(settings.watch))
                log.info("serving TLS from %s (sha256 %s)", tls.cert, tls.fingerprint)
            if on_listening is not None:
                on_listening(url)
            else:
                print(f"servegate: listening on {url}", flush=True)
            if banner:
                print(banner, flush=True)
            try:
                await signals.first.wait()
            finally:
                await _drain(runner, app, settings, signals)
    finally:
        signals.remove()


class _Signals:
    """SIGTERM and SIGINT: the first starts the drain, a second one hurries it. A repeat
    within a second is the same request delivered twice (Ctrl-C reaches the workers from
    the terminal and from the parent process), not a second one."""

    _REPEAT_S = 1.0

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.first = asyncio.Event()
        self.again = asyncio.Event()
        self.received: signal.Signals | None = None
        self._at = 0.0
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal, sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        now = self._loop.time()
        if self.received is None:
            self.received, self._at = sig, now
            self.first.set()
        elif now - self._at >= self._REPEAT_S and not self.again.is_set():
            log.warning("%s again: not waiting any longer", sig.name)
            self.again.set()

    def remove(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._loop.remove_signal_handler(sig)


async def _drain(
    runner: web.AppRunner, app: web.Application, settings: GatewaySettings, signals: _Signals
) -> None:
    """The drain sequence. Everything but the last step (the cleanup contexts: usage rows
    flushed, at most 5 s; connections closed) happens within ``grace_period`` of the signal."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.grace_period
    drain = app[drain_key]
    drain.begin()  # /readyz: 503; every response from now on: Connection: close
    # SIGINT is a person at a terminal: no load balancer to wait for.
    delay = 0.0 if signals.received == signal.SIGINT else settings.drain_delay
    delay = min(delay, settings.grace_period)
    log.info(
        "draining: /readyz answers 503; accepting new connections for %g s more, "
        "then waiting up to %g s for requests in flight",
        delay,
        max(0.0, settings.grace_period - delay),
    )
    if delay > 0:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await signals.again.wait()
    for site in list(runner.sites):  # new connections are refused from here on
        await site.stop()
    in_flight = drain.in_flight
    log.info("stopped listening; %d requests in flight", in_flight)
    if await _finish_connections(runner, drain, deadline, signals.again):
        if in_flight:
            log.info("requests in flight finished")
    else:
        streams = app[active_streams_key].end_all()
        log.warning(
            "grace period over: %d requests still in flight are cut off (%d streams end "
            "with an error event)",
            drain.in_flight,
            streams,
        )
        await drain.wait_idle(_CANCEL_WAIT_S)
    # Cancels whatever is left, then runs the cleanup contexts in reverse order: the usage
    # writer flushes its queue (bounded), then the upstream client closes.
    await runner.cleanup()
    log.info("stopped")


async def _finish_connections(
    runner: web.AppRunner, drain: Drain, deadline: float, hurry: asyncio.Event
) -> bool:
    """Until ``deadline``: let the requests in flight finish, and close each client
    connection once no request has used it for ``_LINGER_S``. True once none is left.

    Not closing a connection the moment its response ends matters: a response that started
    before the drain did not say ``Connection: close``, so its client may send its next
    request on the same connection at once, and closing under that request would fail it
    (a POST is not retried). Within the linger it is answered, with ``Connection: close``.
    """
    server = runner.server
    loop = asyncio.get_running_loop()
    quiet_since: dict[RequestHandler, float] = {}
    while True:
        now = loop.time()
        connections = server.connections if server is not None else []
        for connection in connections:
            if connection in drain.busy:
                quiet_since.pop(connection, None)
            elif now - quiet_since.setdefault(connection, now) >= _LINGER_S:
                connection.force_close()
        if not connections and drain.in_flight == 0:
            return True
        if now >= deadline or hurry.is_set():
            return drain.in_flight == 0
        await asyncio.sleep(min(_POLL_S, deadline - now))


def tune_gc() -> None:
    """Make the cyclic garbage collector cheap for a long-running server.

    - Everything allocated at startup (modules, pydantic schemas, the config, the metrics)
      is moved out of the collector's sight (``gc.freeze``): it is never garbage, yet every
      full collection would walk it again.
    - A young collection runs after 10,000 net new container objects, not CPython's 700.
      Requests allocate and free thousands of objects (freed by reference counting, never
      by the collector); at 700 their overlap alone triggered a collection every dozen
      requests, 6 % of the gateway's CPU (bench/RESULTS.md, "Profile"). Garbage in cycles
      is still collected, a little later.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` on uvloop (libuv's event loop: a faster socket path than asyncio's
    selector loop), or on asyncio's own loop where uvloop is not installed."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def _worker(settings: GatewaySettings, host: str, port: int, ready: Queue[Any]) -> None:
    stop_logging = setup_logging(
        os.environ.get("SERVEGATE_LOG_LEVEL", "INFO"),
        fmt=f"%(asctime)s %(levelname)s %(name)s [worker {os.getpid()}] %(message)s",
    )
    try:
        run_loop(run_gateway(settings, host, port, reuse_port=True, on_listening=ready.put))
    except ListenError as exc:
        ready.put(f"error: {exc}")
    except TLSConfigError as exc:  # the files changed since the parent checked them
        ready.put(f"tls-error: {exc}")
    finally:
        stop_logging()


def run_workers(settings: GatewaySettings, host: str, port: int, workers: int) -> int:
    ServerTLS.from_settings(settings)  # a bad certificate is reported once, before any worker
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    reservation = socket.socket(family, socket.SOCK_STREAM)
    metrics_dir = tempfile.mkdtemp(prefix="servegate-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    os.environ["SERVEGATE_LOG_LEVEL"] = logging.getLevelName(logging.getLogger().level)
    processes: list[Any] = []
    try:
        reservation.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            reservation.bind((host, port))
        except OSError as exc:
            raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        port = reservation.getsockname()[1]
        context = multiprocessing.get_context("spawn")
        ready: Queue[Any] = context.Queue()
        for _ in range(workers):
            process = context.Process(target=_worker, args=(settings, host, port, ready))
            process.start()
            processes.append(process)
        urls = [ready.get(timeout=_READY_TIMEOUT_S) for _ in processes]
        failed = [u for u in urls if u.startswith("error: ")]
        if failed:
            raise ListenError(failed[0].removeprefix("error: "))
        tls_failed = [u for u in urls if u.startswith("tls-error: ")]
        if tls_failed:
            raise TLSConfigError(tls_failed[0].removeprefix("tls-error: "))
        print(f"servegate: listening on {urls[0]} ({workers} workers)", flush=True)
        return _supervise(processes)
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
        for process in processes:
            process.join(timeout=settings.grace_period + _EXIT_MARGIN_S)
            if process.pid is not None:
                multiprocess.mark_process_dead(process.pid)  # type: ignore[no-untyped-call]
        reservation.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _supervise(processes: list[Any]) -> int:
    """Pass SIGTERM/SIGINT on; if a worker dies on its own, stop the rest (status 1)."""
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for process in processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    sentinels: dict[Any, Any] = {process.sentinel: process for process in processes}
    status = 0
    while sentinels:
        done = multiprocessing.connection.wait(list(sentinels))
        for sentinel in done:
            process = sentinels.pop(sentinel)
            if not stopping:
                log.error(
                    "worker %s exited with %s; stopping the others", process.pid, process.exitcode
                )
                stop(signal.SIGTERM, None)
                return 1
            process.join(timeout=5)  # the sentinel can be ready before the exit status is
            if process.exitcode != 0:
                log.error("worker %s exited with %s while stopping", process.pid, process.exitcode)
                status = 1
    return status
