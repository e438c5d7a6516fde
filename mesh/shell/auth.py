"""Client API protection: a Bearer token check as an ASGI wrapper, and the TLS
contexts of both HTTP ports.

Token. With ``api_token`` (or ``api_token_file``) set, every client API request
must carry ``Authorization: Bearer <token>``; otherwise it is answered ``401
{"error": ...}`` with ``WWW-Authenticate: Bearer``, counted in
``mesh_auth_failures_total{channel="api", reason}`` and its body is never read.
The comparison is constant-time (:func:`hmac.compare_digest`) on the UTF-8 bytes.
``GET /v1/health`` is exempt: Kubernetes liveness and readiness probes and load
balancer checks rarely carry secrets, and health reveals only the node's name,
whether it joined and how many members are alive. Everything else (members,
routes, keyring, metrics, leave) needs the token.

TLS. :func:`server_ssl_context` and :func:`client_ssl_context` build
``ssl.SSLContext`` objects from ``tls_cert``/``tls_key``/``tls_ca``: TLS 1.2 at
least; with a CA the peer server requires a client certificate signed by it
(mutual TLS) and the peer client verifies the server against it.
"""

from __future__ import annotations

import hmac
import json
import ssl
from collections.abc import Callable, Iterable

import structlog

from ..config import Config
from ..errors import ConfigError
from .asgi import ASGIApp, Receive, Scope, Send
from .metrics import Metrics

__all__ = [
    "EXEMPT_PATHS",
    "client_ssl_context",
    "load_api_token",
    "peer_scheme",
    "require_token",
    "server_ssl_context",
]

#: paths served without a token (probes)
EXEMPT_PATHS = frozenset({"/v1/health"})
#: a token file larger than this is a mistake (a key file, a log), not a token
_TOKEN_FILE_LIMIT = 4096


def load_api_token(config: Config) -> str | None:
    """The configured token: ``api_token``, or the first line of
    ``api_token_file``.

    Raises:
        ConfigError: the file cannot be read, is too large or holds no token.
    """
    if config.api_token is not None:
        return config.api_token
    path = config.api_token_file
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            data = f.read(_TOKEN_FILE_LIMIT + 1)
    except OSError as exc:
        raise ConfigError(
            f"cannot read api_token_file {path}: {exc.strerror}"
        ) from None
    if len(data) > _TOKEN_FILE_LIMIT:
        raise ConfigError(f"api_token_file {path} is over {_TOKEN_FILE_LIMIT} bytes")
    lines = data.decode("utf-8", "replace").strip().splitlines()
    if not lines or not lines[0].strip():
        raise ConfigError(f"api_token_file {path} holds no token")
    return lines[0].strip()


def require_token(
    app: ASGIApp,
    token: str,
    *,
    metrics: Metrics,
    log: structlog.typing.FilteringBoundLogger | None = None,
    exempt: Iterable[str] = EXEMPT_PATHS,
    on_refused: Callable[[Scope, int], None] | None = None,
) -> ASGIApp:
    """``app`` behind a Bearer token check (see module docstring).
    ``on_refused(scope, 401)`` counts a refusal where the app counts its own
    answers (``mesh_api_requests_total``): error rates must see them."""
    expected = token.encode()
    exempt_paths = frozenset(exempt)
    refusal = json.dumps(
        {"error": "missing or invalid API token"}, separators=(",", ":")
    ).encode()
    refusal_length = str(len(refusal)).encode()

    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in exempt_paths:
            await app(scope, receive, send)
            return
        reason = _check(scope, expected)
        if reason is None:
            await app(scope, receive, send)
            return
        metrics.auth_failures.labels("api", reason).inc()
        if on_refused is not None:
            on_refused(scope, 401)
        if log is not None:
            log.debug(
                "refused API request",
                reason=reason,
                method=scope.get("method"),
                path=scope["path"],
                peer=scope.get("client"),
            )
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", refusal_length),
                    (b"www-authenticate", b'Bearer realm="mesh"'),
                ],
            }
        )
        await send({"type": "http.response.body", "body": refusal})

    return guarded


def _check(scope: Scope, expected: bytes) -> str | None:
    """None when authorized, else the metric reason."""
    values = [v for k, v in scope.get("headers", ()) if k.lower() == b"authorization"]
    if not values:
        return "missing_token"
    if len(values) > 1:
        return "bad_token"
    scheme, _, presented = bytes(values[0]).strip().partition(b" ")
    if scheme.lower() != b"bearer":
        return "bad_token"
    # compare_digest takes time independent of where the bytes differ.
    if not hmac.compare_digest(presented.strip(), expected):
        return "bad_token"
    return None


def server_ssl_context(
    config: Config, *, require_client_cert: bool
) -> ssl.SSLContext | None:
    """A server context from ``tls_cert``/``tls_key`` (None without them).

    Args:
        require_client_cert: the peer port with ``tls_ca``: mutual TLS.

    Raises:
        ConfigError: a file cannot be loaded.
    """
    if config.tls_cert is None or config.tls_key is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(config.tls_cert, config.tls_key)
        if config.tls_ca is not None:
            context.load_verify_locations(cafile=config.tls_ca)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load TLS files: {exc}") from None
    if require_client_cert and config.tls_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(["http/1.1"])
    return context


def peer_scheme(config: Config) -> str:
    """The URL scheme of every mesh port: all members share the TLS setting."""
    return "https" if config.tls_cert is not None else "http"


def client_ssl_context(config: Config) -> ssl.SSLContext | None:
    """The peer client's context: verify peers against ``tls_ca`` (else the
    system store) and present our certificate. Peers are addressed by IP, so
    the certificate must carry the IP (or check_hostname would fail); with a
    private CA we check the chain only, which is the trust the CA expresses.

    Raises:
        ConfigError: a file cannot be loaded.
    """
    if config.tls_cert is None or config.tls_key is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        if config.tls_ca is not None:
            context.load_verify_locations(cafile=config.tls_ca)
            context.check_hostname = False
        else:
            context.load_default_certs()
        context.load_cert_chain(config.tls_cert, config.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load TLS files: {exc}") from None
    context.verify_mode = ssl.CERT_REQUIRED
    return context
