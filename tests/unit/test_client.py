"""mesh.client without an agent: requests recorded by an httpx.MockTransport.

Bad input (address, timeout, key, text that is not UTF-8) is a ClientError
raised before anything is sent; httpx's exceptions never escape."""

from __future__ import annotations

import math
import re
from typing import Any, ClassVar

import httpx
import pytest

from mesh.client import MAX_TIMEOUT, Client, ClientError, base_url
from mesh.core.route_checks import KEY_RE

ROUTE = {"key": "k", "target": "t", "revision": 0, "origin": "a", "version": 1}


class Recorder:
    """A transport that answers every call with ``answer`` and keeps the requests."""

    def __init__(self, answer: Any = None, body: bytes | None = None) -> None:
        self.requests: list[httpx.Request] = []
        self.answer = ROUTE if answer is None else answer
        self.body = body
        self.transport = httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.body is not None:
            return httpx.Response(200, content=self.body)
        return httpx.Response(200, json=self.answer)

    def client(self, **kw: Any) -> Client:
        return Client("mesh.test:8946", transport=self.transport, **kw)


@pytest.mark.parametrize(
    ("http", "url"),
    [
        ("127.0.0.1:8946", "http://127.0.0.1:8946"),
        (" localhost:1 ", "http://localhost:1"),
        ("HTTPS://Agent.Example:443/", "https://agent.example:443"),
        ("http://[::1]:8946", "http://[::1]:8946"),
        ("http://proxy.example/mesh/", "http://proxy.example/mesh"),
        # a bare host is an agent's: its API port, not 80 (audit 14)
        ("127.0.0.1", "http://127.0.0.1:8946"),
        ("[::1]", "http://[::1]:8946"),
    ],
)
def test_base_url_normalises(http: str, url: str) -> None:
    assert base_url(http) == url


@pytest.mark.parametrize(
    ("http", "reason"),
    [
        ("", "empty address"),
        ("   ", "empty address"),
        ("garbage::", "is not HOST:PORT or a URL"),
        ("http://[::1", "is not HOST:PORT or a URL"),
        ("\udcff", "is not HOST:PORT or a URL"),
        ("ftp://agent.example", "scheme must be http or https"),
        ("http://", "no valid host"),
        ("http:///v1", "no valid host"),
        ("127.0.0.1:0", "port must be 1-65535"),
        ("127.0.0.1:99999", "port must be 1-65535"),
        ("agent.example?x=1", "no query or fragment"),
        ("http://agent.example/#top", "no query or fragment"),
        ("bad addr", "has a space in it"),  # audit 16: looked up as bad%20addr
        # the client adds /v1/...: it asked /v1/v1/members (audit, session 14)
        ("http://127.0.0.1:8946/v1", "without /v1"),
        ("127.0.0.1:8946/v1/", "without /v1"),
    ],
)
def test_bad_address_is_a_client_error(http: str, reason: str) -> None:
    with pytest.raises(ClientError, match=reason):
        base_url(http)
    with pytest.raises(ClientError, match=reason):
        Client(http)


@pytest.mark.parametrize("timeout", [0.0, -1.0, math.nan, math.inf, MAX_TIMEOUT * 2])
def test_bad_timeout_is_a_client_error(timeout: float) -> None:
    with pytest.raises(ClientError, match="timeout must be a number of seconds"):
        Client("127.0.0.1:8946", timeout=timeout)


@pytest.mark.parametrize("token", ["é", "a\nb", "tab\there"])
def test_token_that_cannot_be_a_header_is_a_client_error(token: str) -> None:
    with pytest.raises(ClientError, match="printable ASCII"):
        Client("127.0.0.1:8946", token=token)


BAD_KEYS = ["..", ".", "", "a/b", "_a", "-a", "a b", "é", "k" * 254, "a?b", "a#b"]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_invalid_key_is_refused_before_sending(key: str) -> None:
    recorder = Recorder()
    message = f"invalid key {key!r}: must match ^{KEY_RE.pattern}$"
    with recorder.client() as client:
        for call in (
            lambda: client.get_route(key),
            lambda: client.put_route(key, "t"),
            lambda: client.delete_route(key),
        ):
            with pytest.raises(ClientError) as info:
                call()
            assert str(info.value) == message
    assert recorder.requests == []


@pytest.mark.parametrize("key", ["a", "a:b@c", "svc.web-1_x", "9" * 253, "a..b"])
def test_valid_key_is_one_path_segment(key: str) -> None:
    recorder = Recorder()
    with recorder.client() as client:
        client.get_route(key)
        client.put_route(key, "t")
        client.delete_route(key)
    assert [r.method for r in recorder.requests] == ["GET", "PUT", "DELETE"]
    for request in recorder.requests:
        assert request.url.path == f"/v1/routes/{key}"


PREFIXES = ["svc.", "p x&y=z#f", "../..", "a/b?c=d", "100%+é", "&prefix=evil"]


@pytest.mark.parametrize("prefix", PREFIXES)
def test_prefix_is_an_encoded_query_parameter(prefix: str) -> None:
    recorder = Recorder({"routes": [], "count": 0, "index": 0})
    with recorder.client() as client:
        client.routes(prefix)
    (request,) = recorder.requests
    assert request.url.path == "/v1/routes"
    assert request.url.params.get_list("prefix") == [prefix]
    assert list(request.url.params.keys()) == ["prefix"]


@pytest.mark.parametrize("prefix", PREFIXES)
def test_watch_prefix_is_an_encoded_query_parameter(prefix: str) -> None:
    recorder = Recorder(body=b'{"event": "snapshot", "index": 1, "routes": []}\n')
    with recorder.client() as client:
        events = list(client.watch_routes(prefix=prefix, index=3))
    assert events == [{"event": "snapshot", "index": 1, "routes": []}]
    (request,) = recorder.requests
    assert request.url.path == "/v1/watch/routes"
    assert request.url.params.get_list("prefix") == [prefix]
    assert request.url.params["index"] == "3"


def test_text_that_is_not_utf8_is_refused_before_sending() -> None:
    # a command-line argument that is not UTF-8 arrives as lone surrogates
    bad = "\udcff"
    recorder = Recorder()
    with recorder.client() as client:
        for call, what in (
            (lambda: client.routes(bad), "prefix"),
            (lambda: list(client.watch_routes(prefix=bad)), "prefix"),
            (lambda: client.put_route("k", bad), "target"),
            (lambda: client.put_route("k", "t", meta={"az": bad}), "meta value"),
            (lambda: client.put_route("k", "t", meta={bad: "a"}), "meta key"),
            (lambda: client.keyring_op("install", bad), "key"),
        ):
            with pytest.raises(ClientError, match=f"^{what} is not valid UTF-8"):
                call()
    assert recorder.requests == []


@pytest.mark.parametrize("seconds", [0.0, -20.0, math.nan, math.inf])
def test_bad_sync_timeout_is_refused_before_sending(seconds: float) -> None:
    recorder = Recorder()
    with recorder.client() as client:
        with pytest.raises(ClientError, match="sync_timeout must be"):
            client.put_route("k", "t", sync_timeout=seconds)
        with pytest.raises(ClientError, match="sync_timeout must be"):
            client.delete_route("k", sync_timeout=seconds)
    assert recorder.requests == []


@pytest.mark.parametrize(
    ("seconds", "sent"),
    [
        (2.0, "2"),
        (0.25, "0.25"),
        (1e-05, "0.00001"),
        (999.0, "999"),
        (86400.0, "86400"),
    ],
)
def test_sync_timeout_is_sent_as_a_plain_decimal(seconds: float, sent: str) -> None:
    """The agent takes ASCII decimals only: no exponent, as str(1e-05) has."""
    recorder = Recorder()
    with recorder.client() as client:
        client.put_route("k", "t", sync_timeout=seconds)
        client.delete_route("k", sync_timeout=seconds)
    for request in recorder.requests:
        assert request.url.params["timeout"] == sent
        assert request.url.params["sync"] == "all"


@pytest.mark.parametrize("wait", [-1.0, math.nan, math.inf])
def test_bad_wait_is_refused_before_sending(wait: float) -> None:
    recorder = Recorder()
    with recorder.client() as client, pytest.raises(ClientError, match="wait must"):
        client.routes(index=1, wait=wait)
    assert recorder.requests == []


@pytest.mark.parametrize(
    "exc",
    [
        httpx.InvalidURL("Invalid port: ':'"),
        httpx.UnsupportedProtocol("Request URL has an unsupported protocol"),
        httpx.LocalProtocolError("Illegal header value"),
    ],
)
def test_httpx_errors_become_client_errors(exc: Exception) -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        raise exc

    transport = httpx.MockTransport(handle)
    with Client("mesh.test:8946", transport=transport) as client:
        with pytest.raises(ClientError, match=re.escape(str(exc))):
            client.members()
        with pytest.raises(ClientError, match=re.escape(str(exc))):
            list(client.watch_routes())


@pytest.mark.parametrize(
    ("url", "hinted"), [("mesh.test:8946", True), ("https://mesh.test:8946", False)]
)
def test_a_dropped_plain_request_hints_at_tls(url: str, hinted: bool) -> None:
    """A plain request to a TLS listener is dropped without an answer: say
    what to try (audit, session 14: the CLI in a TLS agent's container)."""

    def handle(request: httpx.Request) -> httpx.Response:
        raise httpx.RemoteProtocolError(
            "Server disconnected without sending a response."
        )

    client = Client(url, transport=httpx.MockTransport(handle))
    with client, pytest.raises(ClientError) as info:
        client.members()
    assert ("call https://HOST:PORT" in str(info.value)) is hinted


class HttpxSpy:
    """Stands in for ``httpx.Client``: keeps the arguments it was built with."""

    calls: ClassVar[list[dict[str, Any]]] = []

    def __init__(self, **kw: Any) -> None:
        HttpxSpy.calls.append(kw)

    def close(self) -> None:
        pass


def test_ca_bundle_path_reaches_httpx_as_a_verifying_context(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ssl

    import certifi

    monkeypatch.setattr(HttpxSpy, "calls", [])
    monkeypatch.setattr(httpx, "Client", HttpxSpy)
    Client("https://127.0.0.1:8946", verify=certifi.where()).close()
    Client("https://127.0.0.1:8946").close()
    verify = HttpxSpy.calls[0]["verify"]
    assert isinstance(verify, ssl.SSLContext)
    assert verify.verify_mode is ssl.CERT_REQUIRED
    assert verify.check_hostname
    assert verify.get_ca_certs()  # the bundle's CAs were loaded
    assert HttpxSpy.calls[1]["verify"] is True  # default: the system trust store


@pytest.mark.parametrize("content", [None, "not a certificate\n"])
def test_unloadable_ca_bundle_is_a_client_error(
    tmp_path: Any, content: str | None
) -> None:
    path = tmp_path / "ca.pem"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ClientError, match="cannot load the CA bundle"):
        Client("https://127.0.0.1:8946", verify=str(path))
