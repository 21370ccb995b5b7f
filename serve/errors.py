"""OpenAI-shaped errors: {"error": {"message", "type", "param", "code"}}, for every 4xx and
5xx the endpoint answers, including FastAPI's own (malformed JSON, an unknown route)."""

from __future__ import annotations

import logging

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

logger = logging.getLogger("synth.serve")

_TYPES = {401: "invalid_request_error", 404: "invalid_request_error", 413: "invalid_request_error",
          429: "rate_limit_error", 503: "server_error", 500: "server_error"}


class APIError(Exception):
    """An answer other than 200: the status, a message for the caller, the field it names."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        kind = _TYPES.get(self.status, "invalid_request_error" if self.status < 500 else "server_error")
        body = {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def invalid(message: str, param: str | None, code: str = "invalid_value") -> APIError:
    return APIError(400, message, param, code)


def _param(loc) -> str | None:
    """The request field an error location names: ("body", "n") -> "n"."""
    parts = [str(part) for part in loc if part not in ("body", "query", "form")]
    return ".".join(parts) or None


def from_validation(error: ValidationError, rename: dict[str, str] | None = None) -> APIError:
    """A stage declaration's (or a request model's) validation error, naming the field as
    the request calls it (rename: declaration field -> request field, e.g. width -> size)."""
    from pipeline.stages import STAGES

    item = error.errors()[0]
    cause = item.get("ctx", {}).get("error")
    # A stage's errors sit below its kind's tag (txt2img.width): the request calls it width.
    param = getattr(cause, "path", None) or _param([part for part in item["loc"] if part not in STAGES])
    text = str(cause) if cause is not None else item["msg"].removeprefix("Value error, ")
    message = f"{param}: {text}" if param else text
    if rename and param in rename:
        message = f"{rename[param]}: {text} ({param})"
        param = rename[param]
    return invalid(message, param)


def install(app) -> None:
    """Exception handlers that answer every error in the OpenAI shape."""

    @app.exception_handler(APIError)
    async def _api(request: Request, error: APIError):
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def _request(request: Request, error: RequestValidationError):
        item = error.errors()[0]
        if item["type"] == "json_invalid":
            return invalid("We could not parse the JSON body of your request: "
                           f"{item.get('ctx', {}).get('error', 'invalid JSON')}", None, "invalid_json").response()
        param = _param(item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        return invalid(f"{param}: {message}" if param else message, param).response()

    @app.exception_handler(HTTPException)
    async def _http(request: Request, error: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code)
        return APIError(error.status_code, str(error.detail), None, code).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception):
        # A bug or a broken device, not the caller's fault: logged here, never its details out.
        logger.exception("request %s %s failed", request.method, request.url.path)
        return APIError(500, "The server had an error while processing your request.", None,
                        "server_error").response()
