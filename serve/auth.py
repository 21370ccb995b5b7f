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
