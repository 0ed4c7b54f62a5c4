"""Server-side TLS for a simulator site.

MSAL refuses non-https authorities, so the Entra simulator must serve TLS. This
builds the :class:`ssl.SSLContext` for an aiohttp site from a certificate chain and
private key in PEM, given either as file paths or as the PEM bytes themselves
(what a test's throwaway CA produces). No certificate tooling is imported here: the
runtime package never depends on test-only libraries.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from pathlib import Path

__all__ = ["PemSource", "server_ssl_context"]

#: A PEM file path, or the PEM text itself.
PemSource = str | bytes | os.PathLike[str]


def _pem_text(source: PemSource) -> bytes | None:
    """The PEM bytes when ``source`` is PEM text, None when it is a path."""
    if isinstance(source, bytes):
        return source
    if isinstance(source, str) and "-----BEGIN" in source:
        return source.encode()
    return None


def server_ssl_context(cert_pem: PemSource, key_pem: PemSource) -> ssl.SSLContext:
    """A TLS server context (TLS 1.2+) presenting ``cert_pem`` (leaf first, then any
    intermediates) with ``key_pem``. ``bytes`` are always taken as PEM text; a ``str``
    is PEM text if it contains a ``-----BEGIN`` line, else a path."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # ssl only loads certificates from files: stage PEM text in a private directory
    # (mkdtemp makes it owner-only) that is removed once the context holds the keys.
    with tempfile.TemporaryDirectory(prefix="servegate-sim-tls-") as tmp:
        paths: list[str] = []
        for name, source in (("cert.pem", cert_pem), ("key.pem", key_pem)):
            text = _pem_text(source)
            if text is None:
                assert not isinstance(source, bytes)
                paths.append(os.fspath(source))
            else:
                staged = Path(tmp, name)
                staged.write_bytes(text)
                paths.append(str(staged))
        context.load_cert_chain(certfile=paths[0], keyfile=paths[1])
    return context
