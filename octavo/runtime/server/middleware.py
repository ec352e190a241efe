"""The gate every HTTP request passes (pure ASGI, so streaming and disconnects are untouched):

- a request id (the caller's `X-Request-Id` when it is plain, else a fresh one), sent back in
  `X-Request-Id` and named in every log line about the request;
- on /v1 and the tokenizer routes: the API key (401; any one of --api-key's), then 503 while the
  model loads or the server drains, then counting the request as in flight (the drain waits for
  the count to reach zero);
- request bodies over --max-request-body-bytes: 413 from the Content-Length header before a byte
  is read, or once a chunked body passes the limit (before any parsing);
- any exception that escapes a handler is logged with the request id and answered with a plain
  500, its text never sent to the client.
"""

from __future__ import annotations

import hmac
import logging
import re

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from octavo.runtime.server.errors import APIError
from octavo.runtime.server.ids import random_hex
from octavo.runtime.server.state import Phase, ServingState

logger = logging.getLogger("octavo.server")

_CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


TOKENIZER_PATHS = ("/tokenize", "/detokenize", "/tokenizer_info")


def is_api_path(path: str) -> bool:
    return path == "/v1" or path.startswith("/v1/") or path in TOKENIZER_PATHS


def _body_too_large(limit: int) -> APIError:
    return APIError(413, f"the request body is over {limit} bytes (--max-request-body-bytes): send a shorter "
                    "prompt", code="request_too_large")


class GatewayMiddleware:
    def __init__(self, app: ASGIApp, state: ServingState) -> None:
        self.app = app
        self.state = state
        self._expected = [f"Bearer {key}".encode() for key in state.settings.api_keys]

    def _authorized(self, headers: Headers) -> bool:
        if not self._expected:
            return True
        given = headers.get("authorization", "").encode("latin-1", "replace")
        # Every key is compared (constant time each), so timing does not tell which one matched.
        return sum(hmac.compare_digest(given, expected) for expected in self._expected) > 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        # A caller's own id (a tracing proxy's) is kept when it is short and plain; else ours.
        given_id = headers.get("x-request-id", "")
        request_id = given_id if _CLIENT_REQUEST_ID.fullmatch(given_id) else random_hex(16)
        scope.setdefault("state", {})["request_id"] = request_id
        started = False
        state = self.state

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = MutableHeaders(scope=message)
                headers["x-request-id"] = request_id
                if state.phase is Phase.DRAINING:
                    headers["connection"] = "close"  # keep-alive clients reconnect to another replica
            await send(message)

        # Behind --root-path the scope's path may carry the prefix; the gate judges the route.
        path, root = scope["path"], scope.get("root_path", "")
        api = is_api_path(path[len(root):] if root and path.startswith(root) else path)
        if api:
            if not self._authorized(headers):
                refusal = APIError(401, "missing or invalid API key: send 'Authorization: Bearer <key>'",
                                   code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
            else:
                refusal = state.unavailable()
            if refusal is not None:
                if refusal.status == 503:
                    state.metrics.rejected(str(refusal.code))
                await refusal.response()(scope, receive, send_with_id)
                return
            limit = state.settings.max_request_body_bytes
            declared = headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limit:
                await _body_too_large(limit).response()(scope, receive, send_with_id)
                return
            if scope.get("method") in ("POST", "PUT", "PATCH"):
                replaying = await _read_body(receive, limit)
                if replaying is None:
                    await _body_too_large(limit).response()(scope, receive, send_with_id)
                    return
                receive = replaying
            state.num_api_requests += 1
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            logger.exception("request %s %s %s failed", request_id, scope.get("method"), scope["path"])
            if not started:
                error = APIError(500, f"internal error (request {request_id}); see the server log")
                await error.response()(scope, receive, send_with_id)
        finally:
            if api:
                state.num_api_requests -= 1


async def _read_body(receive: Receive, limit: int) -> Receive | None:
    """Read the whole request body (at most `limit` bytes; a chunked body declares no length) and
    return a `receive` that replays it, then passes the client's messages on (disconnects). None
    when the body passes the limit."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # the client left: let the app see it
            replay: list[Message] = [message]
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            replay = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]
            break

    async def replaying() -> Message:
        return replay.pop() if replay else await receive()

    return replaying
