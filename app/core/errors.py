"""OpenAI-shaped errors: HTTP status + {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

import logging
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("whetstone.errors")


class APIError(Exception):
    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers


def invalid(message: str, *, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def not_found(kind: str, object_id: str, *, param: str | None = None) -> APIError:
    return APIError(404, f"No such {kind}: '{object_id}'", param=param, code=f"{kind}_not_found".replace(" ", "_").replace("-", "_"))


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def _json(status: int, body: dict, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content=body, headers=headers)


_NOT_FIELDS = {"body", "query", "path", "header", "form", "int", "float", "str", "bool", "list", "dict"}


def _param_from_loc(loc: tuple) -> str | None:
    """('body', 'hyperparameters', 'n_epochs', "literal['auto']") -> 'hyperparameters.n_epochs'."""
    parts = [str(p) for p in loc if str(p) not in _NOT_FIELDS and re.fullmatch(r"\w+", str(p))]
    return ".".join(parts) or None


_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[\\/][\w.@+~-]+){2,}[\\/]?")
_SQL = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE)\b.*\bFROM\b|\[SQL:|psycopg|sqlalche\.me", re.IGNORECASE | re.DOTALL)


def public_reason(exc: BaseException, limit: int = 500) -> str:
    """`Type: message` of an exception, fit for a client (a job's or evaluation's error): file
    paths become <path>, and a database error says only that it was one."""
    text = str(exc)
    if _SQL.search(text) or type(exc).__module__.startswith(("sqlalchemy", "psycopg")):
        return f"{type(exc).__name__}: a database error occurred"
    text = _PATH.sub("<path>", text.splitlines()[0] if text else "")
    return f"{type(exc).__name__}: {text}"[:limit]


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return _json(exc.status_code, error_body(exc.message, exc.type, exc.param, exc.code), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if errors and errors[0].get("type") == "json_invalid":  # loc is ('body', <offset>): no field to name
            reason = errors[0].get("ctx", {}).get("error", "decode error")
            message = f"The request body is not valid JSON: {reason} at character {errors[0]['loc'][-1]}."
            return _json(400, error_body(message, "invalid_request_error", None, "invalid_json"))
        param = _param_from_loc(tuple(errors[0].get("loc", ()))) if errors else None
        # A union ("auto" or a number) fails once per branch: say all of them.
        reasons = [e.get("msg", "") for e in errors if _param_from_loc(tuple(e.get("loc", ()))) == param]
        reason = " or ".join(dict.fromkeys(r for r in reasons if r)) or "invalid request"
        message = f"Invalid value for '{param}': {reason}" if param else f"Invalid request: {reason}"
        return _json(400, error_body(message, "invalid_request_error", param, "invalid_value"))

    @app.exception_handler(DataError)
    async def _unstorable(_: Request, exc: DataError) -> JSONResponse:
        # A value the database cannot hold (a NUL character in text, an integer out of range): the
        # transaction is rolled back, so nothing was stored. Found by schemathesis (issue 16).
        log.info("refused a value the database cannot store: %s", type(exc.orig).__name__)
        return _json(400, error_body("The request holds a value that cannot be stored (a NUL character in a "
                                     "text field, or a number out of range).", "invalid_request_error", None,
                                     "invalid_value"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 404 and message == "Not Found":
            message = "Unknown request URL. Please check the URL and method."
        if exc.status_code == 405:
            message = "Method not allowed for this URL."
        code = None
        if exc.status_code == 400:  # Starlette's and FastAPI's only 400s: a body they could not parse
            code = "invalid_body"
            if message == "There was an error parsing the body":
                message = ("The request body could not be parsed: it must be well-formed JSON or form data in "
                           "UTF-8, within the server's limits on fields and part sizes.")
        return _json(exc.status_code, error_body(message, kind, None, code), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Nothing of the exception reaches the client (no trace, path or SQL): only the request id,
        # which the log line with the full traceback carries too.
        request_id = getattr(request.state, "request_id", None) or "unknown"
        log.error("unhandled error (request %s) on %s %s", request_id, request.method, request.url.path,
                  exc_info=exc, extra={"request_id": request_id})
        return _json(
            500,
            error_body(f"The server had an error processing your request. Sorry about that! You can retry your "
                       f"request, or contact us with the request id {request_id} if the error persists.",
                       "server_error", None, "internal_error"),
            {"x-request-id": request_id},
        )
