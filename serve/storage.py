"""Where `response_format: url` puts images: a local folder (served back by the endpoint's
/v1/files route) or an s3:// prefix (answered with a presigned URL). Names are random, so a
URL cannot be guessed from another."""

from __future__ import annotations

import re
import secrets

from pipeline import storage
from serve.errors import APIError

_NAME = re.compile(r"^[0-9a-f]{32}\.(png|jpeg|webp)$")
_MEDIA = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


class UrlStore:
    def __init__(self, config):
        self.config = config
        self.fs, self.root = storage.filesystem(config.path, config.storage_options)
        self.remote = storage.is_remote(config.path)
        if not self.remote:
            self.fs.makedirs(storage.join(self.root, "images"), exist_ok=True)

    def _path(self, name: str) -> str:
        return storage.join(self.root, "images", name)

    def put(self, data: bytes, image_format: str, request) -> str:
        """Write one image; its URL."""
        name = f"{secrets.token_hex(16)}.{image_format}"
        try:
            storage.write_bytes_atomic(self.fs, self._path(name), data)
        except Exception as error:  # a full disk, a missing bucket: the server's, not the caller's
            raise APIError(500, f"The image could not be stored: {type(error).__name__}", None,
                           "storage_error") from None
        if self.remote:
            return self.fs.url(self._path(name), expires=self.config.expires_s)
        base = self.config.public_url or str(request.base_url)
        return f"{base.rstrip('/')}/v1/files/{name}"

    def response(self, name: str):
        from fastapi.responses import Response

        if self.remote or not _NAME.match(name) or not self.fs.exists(self._path(name)):
            raise APIError(404, "No such file.", None, "not_found")
        with self.fs.open(self._path(name), "rb") as handle:
            data = handle.read()
        return Response(data, media_type=_MEDIA[name.rsplit(".", 1)[1]])
