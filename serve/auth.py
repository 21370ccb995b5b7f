"""API keys: with keys configured (SYNTH_API_KEYS, or a file of one key per line), every /v1
request needs `Authorization: Bearer <key>`. Only the keys' sha256 digests are kept, compared
in constant time; neither keys nor presented tokens are ever logged."""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

ENV = "SYNTH_API_KEYS"


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


class ApiKeys:
    def __init__(self, keys: list[str]):
        self._digests = [_digest(key) for key in keys]

    @classmethod
    def load(cls, keys_file: str | None = None, environ=os.environ) -> "ApiKeys":
        """Keys from the environment (comma or whitespace separated) and the file (one per
        line, # comments); none from either: the endpoint is open."""
        keys = environ.get(ENV, "").replace(",", " ").split()
        if keys_file:
            for line in Path(keys_file).read_text().splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    keys.append(line)
        return cls(keys)

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def allows(self, authorization: str | None) -> bool:
        """True when no keys are configured, or the header carries one of them."""
        if not self._digests:
            return True
        scheme, _, token = (authorization or "").partition(" ")
        presented = _digest(token.strip()) if scheme.lower() == "bearer" else b""
        # Every key is compared, whichever matches: the time taken tells nothing.
        found = False
        for digest in self._digests:
            found |= hmac.compare_digest(presented, digest)
        return found


class RequireKey:
    """ASGI middleware: /v1 requests without a valid key get 401 before their body is read.
    The keys are app.state.api_keys (set by the ingress); /v1/files/ (random names that a
    `url` response hands out, as presigned URLs are) and everything outside /v1 stay open."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        keys = getattr(scope["app"].state, "api_keys", None) if scope["type"] == "http" and "app" in scope else None
        path = scope.get("path", "")
        if keys is not None and path.startswith("/v1/") and not path.startswith("/v1/files/"):
            authorization = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
            if not keys.allows(authorization):
                from serve.errors import APIError

                response = APIError(401, "Incorrect or missing API key: send it as `Authorization: Bearer <key>`.",
                                    None, "invalid_api_key", {"WWW-Authenticate": "Bearer"}).response()
                return await response(scope, receive, send)
        return await self.app(scope, receive, send)
