"""A cap on request bodies, enforced while they arrive: a body over the limit gets 413 before
it is held in memory whole, whether it declares its length or streams in chunks."""

from __future__ import annotations

from serve.errors import APIError


class BodyLimit:
    """ASGI middleware; the limit is read from app.state.max_request_bytes at each request."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = getattr(scope["app"].state, "max_request_bytes", None) if "app" in scope else None
        limit = limit or _DEFAULT
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await _too_large(limit, scope, receive, send)
        seen, exceeded = 0, False

        async def counted():
            nonlocal seen, exceeded
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    exceeded = True
                    raise _TooLarge()
            return message

        async def guarded(message):
            if not exceeded:  # what the app answers to a body cut short is replaced below
                await send(message)

        try:
            await self.app(scope, counted, guarded)
        except Exception:
            if not exceeded:
                raise
        if exceeded:
            await _too_large(limit, scope, receive, send)


_DEFAULT = 32 * 2**20


class _TooLarge(Exception):
    pass


async def _too_large(limit: int, scope, receive, send) -> None:
    response = APIError(413, f"The request body is over the limit of {limit} bytes.", None,
                        "request_too_large").response()
    await response(scope, receive, send)
