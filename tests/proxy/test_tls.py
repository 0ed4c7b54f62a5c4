"""``servegate serve --tls-cert --tls-key``: the port speaks HTTPS only, to clients that
trust the certificate's CA (the OpenAI SDK, aiohttp); a new certificate written over the
files is served to new connections without a restart (one worker or several); an unusable
new pair is logged and the previous one keeps serving; unusable files at start are exit
status 2 with the reason, never a traceback."""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import socket
import ssl
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import openai
import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from servegate.server import ServerTLS, TLSConfigError
from tests.conftest import (
    OPENAI_KEY,
    REPO,
    BackgroundLoop,
    GatewayProcess,
    endpoint_doc,
    openai_entity,
    start_site,
    write_secret,
    write_yaml,
)

CHAT = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def sim_url(background_loop: BackgroundLoop) -> Iterator[str]:
    from servegate.simulators.openai import create_openai_app

    runner, url = background_loop.run(start_site(create_openai_app(api_keys={OPENAI_KEY})))
    yield url + "/v1"
    background_loop.run(runner.cleanup())


@dataclass
class Leaf:
    """A certificate for 127.0.0.1 from ``ca``, as the PEM files a gateway is given."""

    ca: trustme.CA
    cert_pem: bytes
    key_pem: bytes

    @classmethod
    def issue(cls, ca: trustme.CA) -> Leaf:
        cert = ca.issue_cert("127.0.0.1", "localhost")
        chain = b"".join(blob.bytes() for blob in cert.cert_chain_pems)
        return cls(ca, chain, cert.private_key_pem.bytes())

    @property
    def fingerprint(self) -> str:
        first = self.cert_pem.split(b"-----END CERTIFICATE-----")[0] + b"-----END CERTIFICATE-----"
        return hashlib.sha256(ssl.PEM_cert_to_DER_cert(first.decode())).hexdigest()

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context


@dataclass
class TLSFiles:
    cert: Path
    key: Path

    def write(self, leaf: Leaf) -> None:
        """In place, key first (as ``cp`` twice would): the watcher may see a half-new pair."""
        self.key.write_bytes(leaf.key_pem)
        self.cert.write_bytes(leaf.cert_pem)


@pytest.fixture
def tls_files(tmp_path: Path) -> TLSFiles:
    """Beside the gateway's log file: what it writes there must not look like a rotation."""
    return TLSFiles(tmp_path / "cert.pem", tmp_path / "key.pem")


def serve_args(tmp_path: Path, sim_url: str) -> list[str]:
    write_secret(tmp_path / "secrets", "openai", "api_key", OPENAI_KEY)
    write_yaml(
        tmp_path / "m" / "chat.yaml", endpoint_doc("chat", [openai_entity("gpt-4o-mini", sim_url)])
    )
    return ["serve", str(tmp_path / "m"), "--secrets-dir", str(tmp_path / "secrets")]


@pytest.fixture
def start_gateway(
    tmp_path: Path, sim_url: str, tls_files: TLSFiles
) -> Iterator[Callable[..., GatewayProcess]]:
    started: list[GatewayProcess] = []

    def start(*extra: str, env: dict[str, str] | None = None) -> GatewayProcess:
        gateway = GatewayProcess(
            [*serve_args(tmp_path, sim_url), *extra], tmp_path / "gw.log", env=env
        )
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        gateway.stop()


def flags(files: TLSFiles) -> list[str]:
    return ["--tls-cert", str(files.cert), "--tls-key", str(files.key)]


def served_fingerprint(url: str) -> str:
    """The leaf certificate a new connection is shown (not verified: whatever it is)."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection((parts.hostname, parts.port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=parts.hostname) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 15) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.05)


def wait_for_certificate(url: str, leaf: Leaf) -> None:
    wait_until(lambda: served_fingerprint(url) == leaf.fingerprint, "the new certificate served")


def sdk(url: str, leaf: Leaf) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{url}/serving-endpoints",
        api_key="unused-on-loopback",
        max_retries=0,
        http_client=openai.DefaultHttpxClient(verify=leaf.client_context(), timeout=10),
    )


def chat(url: str, leaf: Leaf) -> str | None:
    client = sdk(url, leaf)
    try:
        answer = client.chat.completions.create(model="chat", messages=CHAT)
    finally:
        client.close()
    return answer.choices[0].message.content


async def readyz(url: str, context: ssl.SSLContext) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url, ssl=context) as response:
        return response.status, (await response.json())["status"]


# ------------------------------------------------------------------------------- serving


def test_clients_that_trust_the_ca_query_the_gateway_over_https(
    start_gateway: Callable[..., GatewayProcess],
    tls_files: TLSFiles,
    background_loop: BackgroundLoop,
) -> None:
    leaf = Leaf.issue(trustme.CA())
    tls_files.write(leaf)
    gateway = start_gateway(*flags(tls_files))
    assert gateway.url.startswith("https://127.0.0.1:")
    # The OpenAI SDK (httpx) and aiohttp, each trusting the CA.
    assert chat(gateway.url, leaf)
    context = leaf.client_context()
    assert background_loop.run(readyz(gateway.url + "/readyz", context)) == (200, "ready")
    # TLS 1.2 or newer; HTTP/1.1 named by ALPN, so an HTTP/2-capable client does not try h2.
    context.set_alpn_protocols(["h2", "http/1.1"])
    port = int(gateway.url.rsplit(":", 1)[1])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.version() in {"TLSv1.2", "TLSv1.3"}
        assert tls.selected_alpn_protocol() == "http/1.1"
    # A client that offers TLS 1.1 at most (this OpenSSL would speak it) is refused.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # ssl.TLSVersion.TLSv1_1
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.check_hostname, old.verify_mode = False, ssl.CERT_NONE
        old.minimum_version = ssl.TLSVersion.TLSv1_1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("DEFAULT:@SECLEVEL=0")
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        pytest.raises(ssl.SSLError) as refused,
    ):
        old.wrap_socket(raw, server_hostname="127.0.0.1")
    # The server's alert, or (asyncio's TLS drops it when it aborts) the connection closed.
    assert refused.value.reason in {"TLSV1_ALERT_PROTOCOL_VERSION", "UNEXPECTED_EOF_WHILE_READING"}
    # A client that does not trust the CA refuses the gateway.
    with pytest.raises(openai.APIConnectionError):
        chat(gateway.url, Leaf.issue(trustme.CA()))
    assert f"serving TLS from {tls_files.cert} (sha256 {leaf.fingerprint})" in gateway.logs()


def test_plain_http_on_the_tls_port_fails(
    start_gateway: Callable[..., GatewayProcess],
    tls_files: TLSFiles,
    background_loop: BackgroundLoop,
) -> None:
    leaf = Leaf.issue(trustme.CA())
    tls_files.write(leaf)
    gateway = start_gateway(*flags(tls_files))
    port = int(gateway.url.rsplit(":", 1)[1])
    plain = f"http://127.0.0.1:{port}/readyz"
    with pytest.raises(aiohttp.ClientError):
        background_loop.run(readyz(plain, ssl.create_default_context()))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        raw.sendall(b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        received = b""
        while chunk := raw.recv(4096):  # the gateway closes the connection (bounded: timeout)
            received += chunk
    assert not received.startswith(b"HTTP/"), received
    # Nothing broke: HTTPS still answers.
    context = leaf.client_context()
    assert background_loop.run(readyz(gateway.url + "/readyz", context)) == (200, "ready")


# ------------------------------------------------------------------------------- rotation


def test_a_rotated_certificate_reaches_new_connections_without_a_restart(
    start_gateway: Callable[..., GatewayProcess], tls_files: TLSFiles
) -> None:
    first = Leaf.issue(trustme.CA())
    tls_files.write(first)
    gateway = start_gateway(*flags(tls_files))
    port = int(gateway.url.rsplit(":", 1)[1])
    assert served_fingerprint(gateway.url) == first.fingerprint
    # A keep-alive connection opened before the rotation.
    kept = http.client.HTTPSConnection("127.0.0.1", port, context=first.client_context())
    kept.request("GET", "/readyz")
    assert kept.getresponse().read() and kept.sock is not None
    kept_socket = kept.sock

    second = Leaf.issue(trustme.CA())  # another CA: clients must trust it to connect
    tls_files.write(second)
    wait_for_certificate(gateway.url, second)
    assert chat(gateway.url, second)
    with pytest.raises(openai.APIConnectionError):
        chat(gateway.url, first)
    # The connection opened before goes on with the certificate it was shown.
    kept.request("GET", "/readyz")
    response = kept.getresponse()
    assert response.status == 200 and response.read()
    assert kept.sock is kept_socket
    kept.close()
    assert gateway.proc.poll() is None
    assert f"TLS certificate reloaded from {tls_files.cert} (sha256 {second.fingerprint})" in (
        gateway.logs()
    )

    # The same CA, a new leaf: served too. Other files of the directory do not count (the
    # gateway's log is there too: each of its lines would be a change, logging a line...).
    assert gateway.log_path.parent == tls_files.cert.parent
    (tls_files.cert.parent / "notes.txt").write_text("not a certificate")
    third = Leaf.issue(second.ca)
    tls_files.write(third)
    wait_for_certificate(gateway.url, third)
    assert chat(gateway.url, third)
    logs = gateway.logs()
    attempts = logs.count("TLS certificate reloaded") + logs.count("TLS certificate not reloaded")
    assert len(re.findall(r"changes? detected", logs)) == attempts, logs


def test_an_unusable_new_pair_keeps_the_previous_certificate(
    start_gateway: Callable[..., GatewayProcess], tls_files: TLSFiles
) -> None:
    first = Leaf.issue(trustme.CA())
    tls_files.write(first)
    gateway = start_gateway(*flags(tls_files))
    second = Leaf.issue(trustme.CA())

    tls_files.key.write_bytes(second.key_pem)  # a key that does not belong to the certificate
    wait_until(lambda: "TLS certificate not reloaded" in gateway.logs(), "the failed reload logged")
    assert "does not belong to the certificate" in gateway.logs()
    assert served_fingerprint(gateway.url) == first.fingerprint
    assert chat(gateway.url, first)

    tls_files.cert.write_bytes(b"-----BEGIN CERTIFICATE-----\nhalf written")
    tls_files.key.write_bytes(first.key_pem)
    wait_until(lambda: "holds no PEM certificate" in gateway.logs(), "the failed reload logged")
    assert served_fingerprint(gateway.url) == first.fingerprint

    tls_files.cert.write_bytes(second.cert_pem)  # the pair complete again
    tls_files.key.write_bytes(second.key_pem)
    wait_for_certificate(gateway.url, second)
    assert chat(gateway.url, second)


def test_kubelet_style_symlink_swaps_are_seen(
    start_gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    """A mounted Secret: ``tls.crt -> ..data/tls.crt``, and an update swaps ``..data``."""
    mount = tmp_path / "secret"
    mount.mkdir()

    def publish(leaf: Leaf, version: int) -> None:
        payload = mount / f"..v{version}"
        payload.mkdir()
        (payload / "tls.crt").write_bytes(leaf.cert_pem)
        (payload / "tls.key").write_bytes(leaf.key_pem)
        (mount / "..data_tmp").symlink_to(payload.name)
        os.replace(mount / "..data_tmp", mount / "..data")

    first = Leaf.issue(trustme.CA())
    publish(first, 1)
    for name in ("tls.crt", "tls.key"):
        (mount / name).symlink_to(f"..data/{name}")
    gateway = start_gateway(
        "--tls-cert", str(mount / "tls.crt"), "--tls-key", str(mount / "tls.key")
    )
    assert served_fingerprint(gateway.url) == first.fingerprint
    second = Leaf.issue(trustme.CA())
    publish(second, 2)
    wait_for_certificate(gateway.url, second)


def test_workers_serve_tls_from_the_environment_and_each_reloads(
    start_gateway: Callable[..., GatewayProcess], tls_files: TLSFiles
) -> None:
    first = Leaf.issue(trustme.CA())
    tls_files.write(first)
    env = {"SERVEGATE_TLS_CERT": str(tls_files.cert), "SERVEGATE_TLS_KEY": str(tls_files.key)}
    gateway = start_gateway("--workers", "2", env=env)
    assert gateway.url.startswith("https://") and "(2 workers)" in gateway.stdout_lines[-1]
    assert chat(gateway.url, first)

    second = Leaf.issue(trustme.CA())
    tls_files.write(second)
    reloaded = re.compile(r"\[worker (\d+)\] TLS certificate reloaded from .* \(sha256 (\w+)\)")

    def workers_reloaded() -> set[str]:
        return {pid for pid, sha in reloaded.findall(gateway.logs()) if sha == second.fingerprint}

    wait_until(lambda: len(workers_reloaded()) == 2, "both workers reloaded")
    for _ in range(10):  # new connections, spread over both workers by the kernel
        assert served_fingerprint(gateway.url) == second.fingerprint
    assert chat(gateway.url, second)


def test_only_changes_to_the_pair_are_watched(tls_files: TLSFiles) -> None:
    tls_files.write(Leaf.issue(trustme.CA()))
    tls = ServerTLS(tls_files.cert, tls_files.key)
    directory = tls_files.cert.parent.absolute()
    assert tls.concerns(directory / "cert.pem") and tls.concerns(directory / "key.pem")
    assert tls.concerns(directory / "..data") and tls.concerns(directory / "..data_tmp")
    assert not tls.concerns(directory / "gw.log")
    assert not tls.concerns(directory / "cert.pem.swp")


def test_reload_serves_changed_content_only(tls_files: TLSFiles) -> None:
    """What the watcher calls on every event and every 60 s (``--no-watch``: never)."""
    leaf = Leaf.issue(trustme.CA())
    tls_files.write(leaf)
    tls = ServerTLS(tls_files.cert, tls_files.key)
    second = Leaf.issue(trustme.CA())
    tls_files.write(second)
    assert tls.fingerprint == leaf.fingerprint  # nothing happens by itself
    assert tls.reload() is True and tls.fingerprint == second.fingerprint
    assert tls.reload() is False  # unchanged content: nothing to do


# ------------------------------------------------------------------------ bad files: exit 2


def encrypted(key_pem: bytes) -> bytes:
    key = serialization.load_pem_private_key(key_pem, password=None)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )


BAD_FILES: dict[str, tuple[Callable[[Leaf, Leaf], tuple[bytes, bytes]], str]] = {
    "key of another certificate": (
        lambda leaf, other: (leaf.cert_pem, other.key_pem),
        "the private key {key} does not belong to the certificate {cert}",
    ),
    "key given as the certificate": (
        lambda leaf, other: (leaf.key_pem, leaf.key_pem),
        "{cert} holds no PEM certificate",
    ),
    "certificate given as the key": (
        lambda leaf, other: (leaf.cert_pem, leaf.cert_pem),
        "{key} holds no PEM private key",
    ),
    "encrypted key": (
        lambda leaf, other: (leaf.cert_pem, encrypted(leaf.key_pem)),
        "{key} holds an encrypted private key: the gateway needs it unencrypted",
    ),
    "damaged certificate": (
        lambda leaf, other: (
            b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
            leaf.key_pem,
        ),
        "{cert} is not a valid PEM certificate chain",
    ),
    "damaged key": (
        lambda leaf, other: (
            leaf.cert_pem,
            b"-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
        ),
        "{key} is not a valid PEM private key",
    ),
}


def run_serve(tmp_path: Path, sim_url: str, *extra: str, env: dict[str, str] | None = None) -> str:
    """``servegate serve`` that must exit 2 at once: its stderr."""
    done = subprocess.run(
        [sys.executable, "-m", "servegate", *serve_args(tmp_path, sim_url), "--port", "0", *extra],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr and "listening" not in done.stdout
    return done.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("case", BAD_FILES)
def test_unusable_files_at_start_exit_2_with_the_reason(
    tmp_path: Path, sim_url: str, tls_files: TLSFiles, case: str, workers: str
) -> None:
    make, message = BAD_FILES[case]
    cert, key = make(Leaf.issue(trustme.CA()), Leaf.issue(trustme.CA()))
    tls_files.cert.write_bytes(cert)
    tls_files.key.write_bytes(key)
    stderr = run_serve(tmp_path, sim_url, *flags(tls_files), "--workers", workers)
    assert f"servegate: {message.format(cert=tls_files.cert, key=tls_files.key)}" in stderr


def test_missing_files_and_half_the_pair_exit_2(
    tmp_path: Path, sim_url: str, tls_files: TLSFiles
) -> None:
    stderr = run_serve(tmp_path, sim_url, *flags(tls_files))
    assert f"cannot read the TLS certificate {tls_files.cert}: No such file" in stderr
    leaf = Leaf.issue(trustme.CA())
    tls_files.cert.write_bytes(leaf.cert_pem)
    stderr = run_serve(tmp_path, sim_url, *flags(tls_files))
    assert f"cannot read the TLS key {tls_files.key}: No such file" in stderr

    stderr = run_serve(tmp_path, sim_url, "--tls-cert", str(tls_files.cert))
    assert "servegate: --tls-cert needs --tls-key" in stderr
    stderr = run_serve(tmp_path, sim_url, env={"SERVEGATE_TLS_KEY": str(tls_files.key)})
    assert "servegate: --tls-key needs --tls-cert" in stderr
    assert "SERVEGATE_TLS_CERT" in stderr


def test_settings_with_half_a_pair_are_refused(tls_files: TLSFiles) -> None:
    from servegate.app import GatewaySettings

    with pytest.raises(TLSConfigError, match="go together"):
        ServerTLS.from_settings(GatewaySettings(paths=(), tls_cert=tls_files.cert))
    assert ServerTLS.from_settings(GatewaySettings(paths=())) is None
