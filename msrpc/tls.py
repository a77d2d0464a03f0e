"""
TLS material from PEM files, for RPC connections and for registry HTTP alike.

Servers present ``cert``/``key`` and, when ``ca`` is given, require clients to present a
certificate signed by it (mutual TLS).  Clients verify servers against ``ca`` (the system's
trust store when absent) and present ``cert``/``key`` when given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional


@dataclass(frozen=True)
class TLSFiles:
    ca: Optional[str] = None
    cert: Optional[str] = None
    key: Optional[str] = None

    @property
    def enabled(self) -> bool:
        return bool(self.ca or self.cert)


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ValueError(f"cannot read TLS file {path}: {e.strerror}") from None


def _own_certificate(files: TLSFiles) -> Any:
    from twisted.internet import ssl

    cert_pem = _read(files.cert)  # type: ignore[arg-type]
    key_pem = _read(files.key) if files.key else cert_pem
    try:
        return ssl.PrivateCertificate.loadPEM(cert_pem + b"\n" + key_pem)
    except Exception as e:
        raise ValueError(f"bad certificate or key in {files.cert}: {e}") from None


def _authority(files: TLSFiles) -> Any:
    from twisted.internet import ssl

    try:
        return ssl.Certificate.loadPEM(_read(files.ca))  # type: ignore[arg-type]
    except ValueError:
        raise
    except Exception as e:
        raise ValueError(f"bad CA certificate in {files.ca}: {e}") from None


def client_creator(files: TLSFiles) -> Callable[[str], Any]:
    """hostname → connection creator: verify the server (``ca``), present ``cert`` if any."""
    from twisted.internet import ssl

    trust = _authority(files) if files.ca else None
    own = _own_certificate(files) if files.cert else None

    def creator(hostname: str) -> Any:
        return ssl.optionsForClientTLS(hostname, trustRoot=trust, clientCertificate=own)

    return creator


def server_options(files: TLSFiles) -> Any:
    """Context options for a TLS server; with ``ca`` set, clients must present a cert it signed."""
    from twisted.internet import ssl

    if not files.cert:
        raise ValueError("a TLS server needs a certificate (and its key)")
    own = _own_certificate(files)
    if files.ca:
        return own.options(_authority(files))  # verify and require client certificates
    return own.options()
