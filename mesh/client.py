"""A small synchronous client for one agent's HTTP API (``mesh members`` & co).

Synchronous on purpose: the CLI commands make one call (or follow one stream)
and exit, and scripts embedding this need no event loop. Every failure a user
can cause or meet (agent not running, wrong token, unknown key, malformed
answer) becomes one :class:`ClientError` whose message is a complete sentence
for the terminal; httpx's exceptions never escape.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import ssl
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from .core.route_checks import KEY_RE, is_unicode
from .errors import MeshError

__all__ = [
    "DEFAULT_HTTP",
    "MAX_TIMEOUT",
    "Client",
    "ClientError",
    "LIBRARY_ERRORS",
    "base_url",
    "timeout_ok",
]

#: the agent's default client API address (contract.md)
DEFAULT_HTTP = "127.0.0.1:8946"

#: httpx's exceptions that bad input can raise (InvalidURL is no HTTPError);
#: :class:`Client` turns them into ClientError, the CLI catches any that slip by
LIBRARY_ERRORS: tuple[type[Exception], ...] = (httpx.HTTPError, httpx.InvalidURL)

#: the longest timeout a call accepts, in seconds (a day; far longer overflows
#: the socket layer)
MAX_TIMEOUT = 86400.0


class ClientError(MeshError):
    """A call to the agent's API failed: unreachable, refused or malformed.

    ``status`` is the HTTP status when the agent answered (None otherwise);
    ``document`` its JSON error body, if any (e.g. a 409's ``current``).
    """

    def __init__(
        self, message: str, *, status: int | None = None, document: Any = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.document = document


def base_url(http: str) -> str:
    """``HOST:PORT`` (a bare ``HOST``: the API's default port 8946) or a full
    ``http(s)://`` URL, as a base URL.

    Raises:
        ClientError: not an address the client can call; the message says why.
    """
    text = http.strip()
    if not text:
        raise ClientError("empty address: expected HOST:PORT or an http(s):// URL")
    if any(c.isspace() for c in text):
        raise ClientError(f"{http!r} has a space in it: expected HOST:PORT or a URL")
    if "://" not in text:
        text = f"http://{text}"
    try:
        url = httpx.URL(text)
    except httpx.InvalidURL as exc:
        raise ClientError(f"{http!r} is not HOST:PORT or a URL: {exc}") from None
    if url.scheme not in ("http", "https"):
        raise ClientError(f"{http!r}: the scheme must be http or https")
    if not url.host or not url.host.isprintable() or any(c.isspace() for c in url.host):
        raise ClientError(f"{http!r} has no valid host")
    if url.port is not None and not 0 < url.port < 65536:
        raise ClientError(f"{http!r}: the port must be 1-65535")
    if url.query or url.fragment:
        raise ClientError(f"{http!r}: the address takes no query or fragment")
    if url.path.rstrip("/").endswith("/v1"):
        # (a path is a proxy's prefix; the client adds /v1/...: audit, session 14)
        raise ClientError(f"{http!r}: give the agent's address without /v1")
    if url.port is None and "://" not in http:
        # a bare HOST is the agent's host: its API port, not HTTP's 80
        url = url.copy_with(port=int(DEFAULT_HTTP.rpartition(":")[2]))
    return str(url).rstrip("/")


def timeout_ok(seconds: float) -> bool:
    """A timeout the client can use: a finite number of seconds in
    (0, :data:`MAX_TIMEOUT`]."""
    return math.isfinite(seconds) and 0 < seconds <= MAX_TIMEOUT


class Client:
    """Calls to one agent's client API.

    Args:
        http: the agent's API address, ``HOST:PORT`` or a URL (``https://``
            when the agent serves TLS).
        token: the API token, sent as ``Authorization: Bearer``.
        timeout: seconds for each call (a blocking query adds its wait).
        transport: an httpx transport (tests); the network by default.
        verify: TLS verification, for https: True (the system's trust store,
            certifi's bundle), a CA bundle path (``--tls-ca``: the agent's
            private CA), an ``ssl.SSLContext``, or False.

    Raises:
        ClientError: a bad address, token, timeout or CA bundle (before
            anything is sent).
    """

    def __init__(
        self,
        http: str = DEFAULT_HTTP,
        *,
        token: str | None = None,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
        verify: str | bool | ssl.SSLContext = True,
    ) -> None:
        if token and not (token.isascii() and token.isprintable()):
            raise ClientError("the API token must be printable ASCII")
        _check_seconds("timeout", timeout)
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self.url = base_url(http)
        self._timeout = timeout
        if isinstance(verify, str):
            verify = _ca_context(verify)
        self._http = httpx.Client(
            base_url=self.url,
            headers=headers,
            timeout=timeout,
            transport=transport,
            trust_env=False,  # a proxy from the environment must not see the token
            verify=verify,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- calls ---

    def health(self) -> dict[str, Any]:
        return self._call("GET", "/v1/health")

    def members(self) -> list[dict[str, Any]]:
        members: list[dict[str, Any]] = self._call("GET", "/v1/members")["members"]
        return members

    def routes(
        self, prefix: str = "", *, index: int | None = None, wait: float | None = None
    ) -> dict[str, Any]:
        """``{"routes": [...], "count": n, "index": i}``; with ``index`` (and
        ``wait`` seconds), a blocking query."""
        params: dict[str, str] = {}
        if prefix:
            params["prefix"] = _text("prefix", prefix)
        if index is not None:
            params["index"] = str(index)
        timeout = self._timeout
        if wait is not None:
            if not (math.isfinite(wait) and 0 <= wait <= MAX_TIMEOUT):
                raise ClientError(
                    f"wait must be a number of seconds in [0, {MAX_TIMEOUT:g}], "
                    f"got {wait!r}"
                )
            params["wait"] = f"{wait}s"
            timeout += wait
        return self._call("GET", "/v1/routes", params=params, timeout=timeout)

    def get_route(self, key: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/routes/{_key(key)}")

    def put_route(
        self,
        key: str,
        target: str,
        *,
        meta: Mapping[str, str] | None = None,
        revision: int | None = None,
        sync_timeout: float | None = None,
    ) -> dict[str, Any]:
        """Write a route; with ``sync_timeout``, wait that long for every peer."""
        path = f"/v1/routes/{_key(key)}"
        body: dict[str, Any] = {"target": _text("target", target)}
        if meta:
            body["meta"] = {
                _text("meta key", k): _text("meta value", v) for k, v in meta.items()
            }
        if revision is not None:
            body["revision"] = revision
        params, timeout = self._sync(sync_timeout)
        return self._call("PUT", path, body=body, params=params, timeout=timeout)

    def delete_route(
        self,
        key: str,
        *,
        revision: int | None = None,
        sync_timeout: float | None = None,
    ) -> dict[str, Any]:
        path = f"/v1/routes/{_key(key)}"
        params, timeout = self._sync(sync_timeout)
        if revision is not None:
            params["revision"] = str(revision)
        return self._call("DELETE", path, params=params, timeout=timeout)

    def leave(self) -> dict[str, Any]:
        return self._call("POST", "/v1/leave")

    def keyring(self) -> dict[str, Any]:
        """``{"keys": [{"fingerprint": ..., "primary": bool}]}``."""
        return self._call("GET", "/v1/keyring")

    def keyring_op(self, op: str, key: str) -> dict[str, Any]:
        """``install``, ``use`` or ``remove`` a gossip key across the mesh:
        ``{"fingerprint": ..., "results": {member: "ok" | error}}``."""
        if op not in ("install", "use", "remove"):
            raise ValueError(f"op must be install, use or remove, got {op!r}")
        return self._call("POST", f"/v1/keyring/{op}", body={"key": _text("key", key)})

    def watch_routes(
        self, *, index: int | None = None, prefix: str = ""
    ) -> Iterator[dict[str, Any]]:
        """Follow the route change stream: ``snapshot``, ``put``, ``delete``
        and ``heartbeat`` documents, until the agent ends it."""
        params: dict[str, str] = {}
        if index is not None:
            params["index"] = str(index)
        if prefix:
            params["prefix"] = _text("prefix", prefix)
        # No read timeout: quiet spells are bounded by the server's heartbeat.
        timeout = httpx.Timeout(self._timeout, read=None)
        try:
            with self._http.stream(
                "GET", "/v1/watch/routes", params=params, timeout=timeout
            ) as response:
                if response.status_code != 200:
                    response.read()
                    raise self._error(response)
                for line in response.iter_lines():
                    if line.strip():
                        yield _decode(line)
        except LIBRARY_ERRORS as exc:
            raise self._unreachable(exc) from None

    # --- plumbing ---

    def _sync(self, sync_timeout: float | None) -> tuple[dict[str, str], float]:
        if sync_timeout is None:
            return {}, self._timeout
        _check_seconds("sync_timeout", sync_timeout)
        params = {"sync": "all", "timeout": _decimal(sync_timeout)}
        return params, self._timeout + sync_timeout

    def _call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        try:
            response = self._http.request(
                method,
                path,
                params=params,
                json=body,
                timeout=self._timeout if timeout is None else timeout,
            )
        except LIBRARY_ERRORS as exc:
            raise self._unreachable(exc) from None
        if response.status_code >= 400:
            raise self._error(response)
        document = _decode(response.text)
        if not isinstance(document, dict):
            raise ClientError(f"{self.url}{path}: answer is not a JSON object")
        return document

    def _unreachable(self, exc: Exception) -> ClientError:
        if isinstance(exc, httpx.TimeoutException):
            return ClientError(f"the agent at {self.url} did not answer in time")
        if isinstance(exc, httpx.ConnectError):
            return ClientError(
                f"cannot reach the agent at {self.url} ({_reason(exc)}); is "
                "`mesh agent` running there? set --http or MESH_HTTP_ADDR"
            )
        hint = ""
        if isinstance(exc, httpx.RemoteProtocolError) and self.url.startswith("http:"):
            # what a plain request to a TLS listener gets (audit, session 14)
            hint = "; if it serves TLS, call https://HOST:PORT (with --tls-ca)"
        return ClientError(f"request to the agent at {self.url} failed: {exc}{hint}")

    def _error(self, response: httpx.Response) -> ClientError:
        document: Any = None
        message = response.reason_phrase or "error"
        with contextlib.suppress(ValueError):
            document = response.json()
        if isinstance(document, dict) and isinstance(document.get("error"), str):
            message = document["error"]
        status = response.status_code
        hint = ""
        if status == 401:
            hint = " (set --api-token or MESH_API_TOKEN)"
        return ClientError(
            f"{response.request.method} {response.request.url.path}: "
            f"{status} {message}{hint}",
            status=status,
            document=document,
        )


def _key(key: str) -> str:
    """A route key as a path segment; an invalid key is refused here, before
    anything is sent: httpx would resolve ``..`` or ``.`` (``GET /v1``), and the
    agent would only refuse the others (contract.md)."""
    if not KEY_RE.fullmatch(key):
        raise ClientError(f"invalid key {key!r}: must match ^{KEY_RE.pattern}$")
    return quote(key, safe="")


def _text(what: str, text: str) -> str:
    """``text``, if it can be sent (UTF-8): a command-line argument that is not
    valid UTF-8 arrives as lone surrogates."""
    if not is_unicode(text):
        raise ClientError(f"{what} is not valid UTF-8: {text!r}")
    return text


def _ca_context(path: str) -> ssl.SSLContext:
    """A client TLS context that trusts the CA bundle at ``path``."""
    try:
        return ssl.create_default_context(cafile=path)
    except (OSError, ssl.SSLError) as exc:
        reason = exc.strerror or exc
        raise ClientError(f"cannot load the CA bundle {path!r}: {reason}") from None


def _check_seconds(what: str, seconds: float) -> None:
    if not timeout_ok(seconds):
        raise ClientError(
            f"{what} must be a number of seconds in (0, {MAX_TIMEOUT:g}], "
            f"got {seconds!r}"
        )


def _decimal(seconds: float) -> str:
    """Seconds as the agent reads them: a plain decimal (``str`` would write
    ``1e-05``, which it refuses), as short as it goes (999, 0.25)."""
    return f"{seconds:.9f}".rstrip("0").rstrip(".")


def _decode(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise ClientError(f"the agent sent malformed JSON: {text[:80]!r}") from None


def _reason(exc: Exception) -> str:
    cause: BaseException | None = exc
    while cause is not None and cause.__cause__ is not None:
        cause = cause.__cause__
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror.lower()
    text = str(cause or exc) or type(exc).__name__
    return re.sub(r"^\[Errno -?\d+\] ", "", text).lower()
