"""
The one error table of msrpc (DESIGN.md section 4).

Every failure a caller can see is one of these classes.  Errors that travel over the wire
carry a numeric ``code``; client-side failures do not, but all of them say whether a retry
elsewhere is safe (``retry_safe``: the call surely did not run).
"""

from __future__ import annotations

from typing import Any, Optional

OK = 200


class MsrpcError(Exception):
    """Base of every msrpc exception."""

    #: True when the call certainly did not run, so trying another instance is safe.
    retry_safe = False

    def __init__(self, message: str = "", *, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def __str__(self) -> str:
        return self.message or self.__class__.__name__


# --------------------------------------------------------------------------- wire codes


class RpcError(MsrpcError):
    """An error that has a wire code and may be sent from server to client."""

    code = 500

    def __str__(self) -> str:
        return f"[{self.code}] {self.message or self.__class__.__name__}"


class BadRequest(RpcError):
    """Undecodable body or wrong arguments: retrying will not help."""

    code = 400


class Unauthorized(RpcError):
    """Missing or wrong auth token."""

    code = 401


class NotFound(RpcError):
    """Unknown service or method."""

    code = 404


class DeadlineExceeded(RpcError):
    """The call's deadline passed before the server could answer."""

    code = 408


class RemoteError(RpcError):
    """The handler raised; carries the remote exception's type name and message."""

    code = 500

    def __init__(self, message: str = "", *, remote_type: str = "Exception",
                 details: Any = None) -> None:
        super().__init__(message, details=details)
        self.remote_type = remote_type

    def __str__(self) -> str:
        return f"[500] {self.remote_type}: {self.message}"


class Unavailable(RpcError):
    """Server shutting down or overloaded; the call did not run."""

    code = 503
    retry_safe = True


class RateLimited(RpcError):
    """Over the server's rate limit (msgo's code 700); the call did not run."""

    code = 700
    retry_safe = True


_BY_CODE: dict[int, type[RpcError]] = {
    cls.code: cls
    for cls in (BadRequest, Unauthorized, NotFound, DeadlineExceeded, RemoteError,
                Unavailable, RateLimited)
}


def error_from_code(code: int, message: str, details: Any = None) -> RpcError:
    """Rebuild the exception a server reported; unknown codes become a generic RpcError."""
    if code == RemoteError.code:
        remote_type = "Exception"
        if isinstance(details, dict):
            remote_type = str(details.get("type", remote_type))
        return RemoteError(message, remote_type=remote_type, details=details)
    cls = _BY_CODE.get(code)
    if cls is None:
        err = RpcError(message, details=details)
        err.code = code
        return err
    return cls(message, details=details)


# --------------------------------------------------------------------------- client side


class ClientError(MsrpcError):
    """A failure seen only by the client (no wire code)."""


class NoInstances(ClientError):
    """The registry says no live instance provides this service."""


class ConnectError(ClientError):
    """Could not connect to the chosen instance: the call was never sent."""

    retry_safe = True


class ConnectionLost(ClientError):
    """The connection dropped with the call in flight: it may or may not have run."""


class MsgoDropped(ConnectionLost):
    """A Go msgo server closed the connection without answering: msgo does that when the
    method does not exist or an argument is not of the Go type the method takes."""


class CallTimeout(DeadlineExceeded):
    """The client gave up waiting (its own deadline); the call may still have run."""


# --------------------------------------------------------------------------- codec, framing


class DecodeError(MsrpcError, ValueError):
    """A body could not be decoded (bad bytes, unknown registered type, limits)."""


class EncodeError(MsrpcError, TypeError):
    """A value cannot be encoded (unregistered class, unsupported type)."""


class FrameError(MsrpcError):
    """The byte stream violates the framing (bad magic/version, oversized): connection closes."""


# --------------------------------------------------------------------------- registries


class RegistryError(MsrpcError):
    """A registry backend refused or failed a request; carries the backend's own message."""

    def __init__(self, message: str = "", *, backend: str = "", status: Optional[int] = None,
                 details: Any = None) -> None:
        super().__init__(message, details=details)
        self.backend = backend
        self.status = status

    def __str__(self) -> str:
        where = f"{self.backend} " if self.backend else ""
        status = f" (HTTP {self.status})" if self.status is not None else ""
        return f"{where}registry error{status}: {self.message}"


class RegistryUnavailable(RegistryError):
    """No endpoint of the registry could be reached."""


class RegistryAuthError(RegistryError):
    """The registry rejected our credentials."""


__all__ = [
    "OK", "MsrpcError", "RpcError", "BadRequest", "Unauthorized", "NotFound",
    "DeadlineExceeded", "RemoteError", "Unavailable", "RateLimited", "error_from_code",
    "ClientError", "NoInstances", "ConnectError", "ConnectionLost", "MsgoDropped",
    "CallTimeout",
    "DecodeError", "EncodeError", "FrameError",
    "RegistryError", "RegistryUnavailable", "RegistryAuthError",
]
