"""Route push: the shell side of the core's ``Push`` effects.

The core decides *what* goes to whom (per-peer coalescing queues, one batch in
flight per peer, the batch deadline, the retry schedule); this module only runs
each batch over HTTP and reports how it ended:

* one shared ``httpx.AsyncClient`` with a bounded keep-alive pool
  (``push_pool_connections``, ``push_keepalive_expiry``) in its transport,
  :class:`~mesh.shell.http_client.H11Transport` (h11 on trio: ~0.3 ms of client
  CPU per request where httpx's default transport costs ~1.5 ms); a new
  connection costs much more, so connections are reused;
* each ``Push`` runs as a task in our nursery, and every request waits for a
  slot of one ``trio.CapacityLimiter(push_concurrency)``: a write fans out to
  all peers at once without opening hundreds of requests at the same moment.
  The slot is held per request, not per batch, so a batch sleeping between
  retries does not keep another peer waiting;
* each attempt is cut at ``push_request_timeout`` and the whole batch, retries
  and waits for a slot included, at its ``deadline`` (the core's ``now`` is
  ``trio.current_time()``, so its deadline is ours): one cancel scope per
  attempt ends at whichever comes first;
* httpx exceptions and statuses are mapped to the core's :class:`Failure` here,
  at the boundary, and :func:`is_transient` decides whether to retry, sleeping
  per ``core.retry_policy.delays`` (total strictly below one request timeout;
  drawn on a batch's first failure);
* the end is reported once, to :meth:`Agent.push_done`, as ``ok`` or with a
  reason: ``deadline``, ``rejected`` (permanent: other 4xx, a bad ack) or
  ``failed`` (transient failures outlasted the retries). The core then hands
  out the peer's next batch, or drops the deltas and marks the peer for repair.

A batch for a peer that died meanwhile is not cancelled: it ends by its deadline
at the latest, and the core ignores the report of a peer it forgot.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import httpx
import trio

from ..codec_routes import decode_routes_ack, encode_routes
from ..core.effects import Push
from ..core.routes import Route
from ..core.sync import Batch, Failure, is_transient
from ..errors import DecodeError
from ..messages import Address
from .agent import Agent
from .auth import client_ssl_context, peer_scheme
from .http_client import H11Transport, PeerHttpClient
from .net import format_address
from .peer_http import (
    ACK_LIMIT,
    MSGPACK,
    ROUTES_PATH,
    BodyTooLargeError,
    read_limited,
)

__all__ = [
    "PushStatistics",
    "Pusher",
    "failure_from_exception",
    "failure_from_status",
    "open_pusher",
]


def failure_from_exception(exc: httpx.HTTPError) -> Failure:
    """Map an httpx error to the core's :class:`Failure`.

    Timeouts of any phase (connect, read, write, pool) are ``TIMEOUT``; network
    errors (refused, reset) are ``CONNECT``. So is ``RemoteProtocolError``: it
    is what a pooled keep-alive connection closed by the peer at the moment we
    reused it looks like, and resending is safe because applying deltas is
    idempotent. Anything else (an unsupported URL, a local protocol error) is
    ``PROTOCOL``: retrying would fail the same way.
    """
    if isinstance(exc, httpx.TimeoutException):
        return Failure.TIMEOUT
    if isinstance(exc, httpx.NetworkError | httpx.RemoteProtocolError):
        return Failure.CONNECT
    return Failure.PROTOCOL


def failure_from_status(status: int) -> Failure | None:
    """None for 200 (the peer acked); any other status is ``STATUS``."""
    return None if status == 200 else Failure.STATUS


#: peer URLs kept parsed (one per address; cleared whole past this many)
_URL_CACHE_MAX = 4096


@attrs.frozen
class PushStatistics:
    """A snapshot of the pusher (trio's ``statistics()`` convention)."""

    #: batch tasks running (at most one per peer)
    tasks: int
    #: requests holding a concurrency slot right now
    requests_in_flight: int
    #: the most requests ever in flight at once
    max_requests_in_flight: int
    #: the ``push_concurrency`` bound
    concurrency: int


class Pusher:
    """Runs ``Push`` effects; install :meth:`push` as ``agent.push_handler``.

    Use :func:`open_pusher`, which owns the HTTP client and the nursery.

    A ``?sync=all`` write waits for every peer's ack, and the writer's single
    loop pays each push's client CPU in turn, so the per-request path is kept
    lean: a prebuilt ``httpx.Request`` sent with ``client.send`` (no merge of
    the client's default headers, which both ends would then validate), per
    peer values cached, one cancel scope per attempt, no checkpoint for a free
    concurrency slot, retry delays drawn only after a failure, and the ack
    read straight off the response stream (still bounded by ``ACK_LIMIT``).
    """

    def __init__(
        self,
        agent: Agent,
        http: httpx.AsyncClient,
        nursery: trio.Nursery,
        *,
        rng: random.Random | None = None,
    ) -> None:
        config = agent.config
        self._agent = agent
        self._http = http
        self._nursery = nursery
        # Our own generator: jitter must not shift the core's random sequence.
        self._rng = rng if rng is not None else random.Random()
        self._limiter = trio.CapacityLimiter(config.push_concurrency)
        self._request_timeout = config.push_request_timeout
        # What client.build_request would attach: the transport reads each
        # phase's timeout from here (httpx's own request extension).
        self._timeout = http.timeout.as_dict()
        self._headers = httpx.Headers({"content-type": MSGPACK})
        self._scheme = peer_scheme(config)  # https when the mesh port has TLS
        self._urls: dict[Address, httpx.URL] = {}
        self._tasks = 0
        self._requests = 0
        self._max_requests = 0
        # The last body encoded, with the routes it holds: peers that keep up
        # are handed batches of the very same routes, and encoding one costs
        # ~1.5 µs a route. The routes are kept so their ids stay theirs.
        self._last_body: tuple[tuple[Route, ...], bytes] | None = None

    def statistics(self) -> PushStatistics:
        return PushStatistics(
            tasks=self._tasks,
            requests_in_flight=self._requests,
            max_requests_in_flight=self._max_requests,
            concurrency=int(self._limiter.total_tokens),
        )

    def push(self, effect: Push) -> None:
        """Start delivering one batch; never blocks (the agent's dispatch is
        synchronous)."""
        self._nursery.start_soon(self._run, effect.batch, trio.current_time())

    async def _run(self, batch: Batch, handed_out_at: float) -> None:
        metrics = self._agent.metrics
        metrics.push_batch_size.observe(len(batch.routes))
        self._tasks += 1
        try:
            result = await self._deliver(batch)
        finally:
            self._tasks -= 1
        metrics.pushes.labels(result).inc()
        if result == "ok":
            metrics.push_latency.observe(trio.current_time() - handed_out_at)
        else:
            self._agent.log.debug(
                "push abandoned",
                peer=batch.peer,
                routes=len(batch.routes),
                result=result,
            )
        self._agent.push_done(batch, result == "ok", result)

    def _body(self, routes: tuple[Route, ...]) -> bytes:
        """The batch's body, reused when the last batch held the same route
        objects in the same order (one body per write for every peer)."""
        last = self._last_body
        if (
            last is not None
            and len(last[0]) == len(routes)
            and all(a is b for a, b in zip(last[0], routes, strict=True))
        ):
            return last[1]
        body = encode_routes(self._agent.core.name, routes)
        self._last_body = (routes, body)
        return body

    async def _deliver(self, batch: Batch) -> str:
        """Attempts with backoff until acked, a permanent failure, the retries
        run out, or ``batch.deadline`` (every wait below ends by it)."""
        body = self._body(batch.routes)
        url = self._url(batch.addr)
        count = len(batch.routes)
        deadline = batch.deadline
        delays: list[float] | None = None
        attempt = 0
        while True:
            outcome = await self._attempt(url, body, count, deadline)
            if outcome is None:
                return "deadline"
            failure, status = outcome
            if failure is None:
                return "ok"
            self._agent.log.debug(
                "push attempt failed",
                peer=batch.peer,
                attempt=attempt,
                failure=failure.value,
                status=status,
            )
            if not is_transient(failure, status):
                return "rejected"
            if delays is None:
                # Drawn on the first failure only: most batches never retry.
                delays = self._agent.core.retry_policy.delays(self._rng)
            if attempt >= len(delays):
                return "failed"
            self._agent.metrics.push_retries.inc()
            wake = trio.current_time() + delays[attempt]
            if wake >= deadline:
                await trio.sleep_until(deadline)
                return "deadline"
            await trio.sleep_until(wake)
            attempt += 1

    def _url(self, addr: Address) -> httpx.URL:
        url = self._urls.get(addr)
        if url is None:
            # Parsed once per peer address: httpx parses a str URL on every
            # request, a measurable share of a push's client CPU.
            if len(self._urls) >= _URL_CACHE_MAX:
                self._urls.clear()
            url = httpx.URL(f"{self._scheme}://{format_address(addr)}{ROUTES_PATH}")
            self._urls[addr] = url
        return url

    async def _attempt(
        self, url: httpx.URL, body: bytes, count: int, deadline: float
    ) -> tuple[Failure | None, int | None] | None:
        """One request under the concurrency limit, cut by the request timeout
        or ``deadline``, whichever comes first: None when ``deadline`` passed,
        (None, 200) when the peer acked all ``count`` deltas, else the failure
        and the HTTP status if there was one."""
        limiter = self._limiter
        try:
            # A free slot is taken without a checkpoint (a trip through the
            # scheduler per push); the request's own I/O checkpoints anyway.
            limiter.acquire_nowait()
        except trio.WouldBlock:
            with trio.move_on_at(deadline) as waiting:
                await limiter.acquire()
            if waiting.cancelled_caught:  # cancelled, so no slot was taken
                return None
        self._requests += 1
        self._max_requests = max(self._max_requests, self._requests)
        try:
            now = trio.current_time()
            if now >= deadline:
                # Checked here: the request may well go out without a
                # checkpoint, before a past deadline could cancel it.
                return None
            # One scope for both bounds; which one fired is read off its
            # deadline.
            cut_at = min(deadline, now + self._request_timeout)
            with trio.move_on_at(cut_at):
                return await self._post(url, body, count)
            return None if cut_at >= deadline else (Failure.TIMEOUT, None)
        finally:
            self._requests -= 1
            limiter.release()

    async def _post(
        self, url: httpx.URL, body: bytes, count: int
    ) -> tuple[Failure | None, int | None]:
        # Sealed per attempt: a retry is a new request with a fresh nonce, or
        # the peer's replay window would refuse it.
        sealer = self._agent.sealer
        sealed, nonce = sealer.seal_request("POST", ROUTES_PATH, body)
        request = httpx.Request("POST", url, content=sealed, headers=self._headers)
        request.extensions["timeout"] = self._timeout
        try:
            response = await self._http.send(request, stream=True)
            try:
                status = response.status_code
                failure = failure_from_status(status)
                if failure is not None:
                    return failure, status
                data = await read_limited(response, ACK_LIMIT)
            finally:
                await response.aclose()
        except httpx.HTTPError as exc:
            return failure_from_exception(exc), None
        except BodyTooLargeError:
            return Failure.PROTOCOL, 200
        try:
            ack = decode_routes_ack(sealer.open_response(data, nonce))
        except DecodeError:
            return Failure.PROTOCOL, 200
        # A 200 from something that is not a mesh peer (another process took
        # the port) must not count as delivered.
        if ack["received"] != count:
            return Failure.PROTOCOL, 200
        return None, 200


@asynccontextmanager
async def open_pusher(
    agent: Agent,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    rng: random.Random | None = None,
) -> AsyncIterator[Pusher]:
    """A :class:`Pusher` installed as ``agent.push_handler`` until exit.

    On exit, batches still running are cancelled (unreported: the agent is
    stopping) and the client's connections are closed.

    Args:
        agent: whose pushes to run.
        transport: an httpx transport instead of the pooled
            :class:`~mesh.shell.http_client.H11Transport` (tests:
            ``httpx.MockTransport``); the pool limits then do not apply.
        rng: jitter for the retry delays (tests: a seeded generator).
    """
    config = agent.config
    if transport is None:
        # The pool limits live in the transport: h11 on trio costs a third of
        # httpx's default transport per request (mesh/shell/http_client.py).
        transport = H11Transport(
            max_connections=config.push_pool_connections,
            keepalive_expiry=config.push_keepalive_expiry,
            ssl_context=client_ssl_context(config),
        )
    async with (
        PeerHttpClient(
            timeout=httpx.Timeout(config.push_request_timeout),
            transport=transport,
            # A HTTP_PROXY meant for the operator's tools must not reroute
            # peer traffic.
            trust_env=False,
            follow_redirects=False,
        ) as http,
        trio.open_nursery() as nursery,
    ):
        if isinstance(transport, H11Transport):
            nursery.start_soon(transport.sweep_forever)
        pusher = Pusher(agent, http, nursery, rng=rng)
        agent.push_handler = pusher.push
        try:
            yield pusher
        finally:
            agent.push_handler = None
            nursery.cancel_scope.cancel()
