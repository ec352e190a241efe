"""Every error leaves the server in OpenAI's shape:
`{"error": {"message", "type", "param", "code"}}` with the matching HTTP status.

Handlers raise APIError; validation failures (pydantic, malformed JSON) become 400s, unknown
routes 404s. Unexpected exceptions are turned into a 500 by the middleware, which logs them with
the request id and never puts the exception's text in the response.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    500: "internal_server_error",
    503: "service_unavailable_error",
}


class APIError(Exception):
    """An error the client should see, with OpenAI's fields."""

    def __init__(self, status: int, message: str, *, type: str | None = None, param: str | None = None,
                 code: str | int | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or ERROR_TYPES.get(status, "invalid_request_error")
        self.param = param
        self.code = code
        self.headers = headers

    def payload(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.payload(), status_code=self.status, headers=self.headers)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def _describe_validation(exc: RequestValidationError) -> APIError:
    errors = list(exc.errors())
    if not errors:
        return bad_request("the request is invalid")
    first = errors[0]
    if first.get("type") == "json_invalid":
        detail = (first.get("ctx") or {}).get("error", "")
        return bad_request(f"the request body is not valid JSON: {detail}".rstrip(": "), code="invalid_json")
    # A union field (prompt: text, token ids or lists of them) fails once per branch; the branch
    # whose shape matched says what is wrong (a token id below 0), not "should be a string".
    field = first.get("loc", ())[:2]
    for error in errors:
        if tuple(error.get("loc", ())[:2]) == tuple(field) and not str(error.get("type", "")).endswith("_type"):
            first = error
            break
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    # A union's branch names (e.g. "list[constrained-int]") follow the field; keep the field only.
    param = loc[0] if loc else None
    where = ".".join(loc[:1] + [p for p in loc[1:] if p.isdigit()]) if loc else "body"
    message = f"{where}: {first.get('msg', 'invalid value')}"
    fields = {str(e.get("loc", ("",))[1]) if len(e.get("loc", ())) > 1 else "" for e in errors}
    if len(fields) > 1:
        message += f" (and problems in {len(fields) - 1} more field(s))"
    return bad_request(message, param=param)


async def _on_api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    return exc.response()


async def _on_validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return _describe_validation(exc).response()


async def _on_http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    if status == 404:
        message = "no such route: see /docs for the API"
    elif status == 405:
        message = "method not allowed on this route"
    else:
        message = str(exc.detail)
    return APIError(status, message, headers=getattr(exc, "headers", None)).response()


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(APIError, _on_api_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
