"""Shapes shared by several API areas."""

from __future__ import annotations

from typing import Generic, Literal, TypeVar

from pydantic import BaseModel

T = TypeVar("T")


class ListResponse(BaseModel, Generic[T]):
    object: Literal["list"] = "list"
    data: list[T]
    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """Every error answer: {"error": {"message", "type", "param", "code"}}."""

    error: ErrorDetail


_ERROR = {"model": ErrorResponse}
# Documented on every route (issue 16): what the error handlers, body limits and rate limit answer.
ERROR_RESPONSES: dict = {
    400: {**_ERROR, "description": "Invalid request"},
    401: {**_ERROR, "description": "Missing or invalid API key"},
    404: {**_ERROR, "description": "No such object in this project"},
    413: {**_ERROR, "description": "Body, file or storage quota over its limit"},
    429: {**_ERROR, "description": "Rate limit, waiting-job or open-stream limit reached"},
    "default": {**_ERROR, "description": "Any other error"},
}
