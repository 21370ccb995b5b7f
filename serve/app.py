"""The HTTP ingress (FastAPI in a Serve deployment) and the application: one model deployment
per configured model behind it. `build_app(config)` is what `synth serve`, `serve run` and
`serve deploy` start (see serve/README.md).

No `from __future__ import annotations` here: FastAPI reads the route methods' annotations
as objects, and Serve's class-based ingress does not resolve them from strings (a body
model then passes for a query parameter).
"""

import asyncio
import base64
import logging
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from ray import serve

from serve import errors
from serve.api import (EditRequest, GenerationRequest, ImageOptions, Result, UpscaleRequest, VariationRequest,
                       Work, plan)
from serve.errors import APIError, invalid
from serve.auth import RequireKey
from serve.limits import BodyLimit

logger = logging.getLogger("synth.serve")
STATIC = Path(__file__).parent / "static"

app = FastAPI(
    title="synth",
    version="0.1.0",
    description="OpenAI Images-compatible image generation on Ray Serve, with synth's stage models.",
)
# Outermost first: a request without a key is refused before its body is read or capped.
app.add_middleware(BodyLimit)
app.add_middleware(RequireKey)
errors.install(app)

# A failed row's error names the input it blames; those are the caller's to fix (400).
_ROW_FIELDS = ("image", "mask", "prompt", "negative_prompt", "seed", "steps", "guidance_scale", "strength",
               "width", "height")


def _form_schema(model: type[ImageOptions], files: list[str]) -> dict:
    """The OpenAPI description of a multipart endpoint (parsed by hand, for OpenAI-shaped
    errors): its files, then the request model's fields, which arrive as text."""
    properties = {name: {"type": "string", "format": "binary"} for name in files}
    for name, field in model.model_json_schema()["properties"].items():
        properties[name] = {"type": "string", "description": field.get("description", "")}
    schema = {"type": "object", "properties": properties, "required": ["image"]}
    return {"requestBody": {"content": {"multipart/form-data": {"schema": schema}}}}


@serve.ingress(app)
class Gateway:
    """Validates requests, checks keys, sends work to the model deployments, answers in
    OpenAI's shape. Holds no model: a slow model never blocks /healthz or validation."""

    def __init__(self, config: dict, models: dict):
        from serve.auth import ApiKeys
        from serve.config import ServeConfig
        from serve.storage import UrlStore

        self.config = ServeConfig.model_validate(config)
        self.handles = models
        self.keys = ApiKeys.load(self.config.api_keys_file)
        self.store = UrlStore(self.config.url_storage) if self.config.url_storage else None
        app.state.max_request_bytes = self.config.limits.max_request_bytes
        app.state.api_keys = self.keys
        logger.info("synth serve: %d model(s), API keys %s", len(models), "on" if self.keys.enabled else "off")

    # ------------------------------------------------------------ open routes

    @app.get("/healthz", tags=["status"])
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @app.get("/", include_in_schema=False)
    async def playground(self):
        # The page runs only its own inline script and talks only to this origin.
        csp = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
               "img-src data: blob: 'self'; connect-src 'self'; form-action 'none'; base-uri 'none'")
        return FileResponse(STATIC / "index.html", media_type="text/html", headers={"Content-Security-Policy": csp})

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon(self):
        return Response(status_code=204)

    # ------------------------------------------------------------ the API

    # Every /v1 route below needs a key when keys are configured: serve.auth.RequireKey
    # checks it before the body is read.

    @app.get("/v1/models", tags=["models"])
    async def models(self) -> dict:
        return {"object": "list", "data": [
            {"id": model.name, "object": "model", "created": 0, "owned_by": "synth", "kinds": model.kinds()}
            for model in self.config.models]}

    @app.post("/v1/images/generations", tags=["images"])
    async def generations(self, body: GenerationRequest, request: Request):
        return await self._serve(request, body, "txt2img")

    @app.post("/v1/images/edits", tags=["images"], openapi_extra=_form_schema(EditRequest, ["image", "mask"]))
    async def edits(self, request: Request):
        """Inpaint the mask's area when a mask is given (OpenAI: its transparent pixels;
        or white on black), else img2img with `strength`."""
        fields, files = await self._form(request, EditRequest, ("image", "mask"))
        return await self._serve(request, fields, "inpaint" if "mask" in files else "img2img", files)

    @app.post("/v1/images/variations", tags=["images"],
              openapi_extra=_form_schema(VariationRequest, ["image"]))
    async def variations(self, request: Request):
        """img2img of the image without a prompt (or with the optional `prompt`)."""
        fields, files = await self._form(request, VariationRequest, ("image",))
        return await self._serve(request, fields, "img2img", files)

    @app.post("/v1/images/upscale", tags=["images"], openapi_extra=_form_schema(UpscaleRequest, ["image"]))
    async def upscale(self, request: Request):
        """synth's extension: the x4 diffusion upscaler on the image."""
        fields, files = await self._form(request, UpscaleRequest, ("image",))
        return await self._serve(request, fields, "upscale", files)

    @app.get("/v1/files/{name}", tags=["images"])
    async def file(self, name: str):
        """An image a `url` response pointed at (local url storage only)."""
        if self.store is None:
            raise APIError(404, "No such file.", None, "not_found")
        return self.store.response(name)

    # ------------------------------------------------------------ the steps

    async def _form(self, request: Request, model: type[ImageOptions], file_fields: tuple[str, ...]):
        """(the request's text fields, validated; {field: Upload}) from a multipart body."""
        from pydantic import ValidationError

        from serve.uploads import inspect

        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise invalid("This endpoint takes multipart/form-data (image files and text fields).", None,
                          "invalid_content_type")
        try:
            form = await request.form(max_files=4, max_fields=64, max_part_size=1024 * 1024)
        except Exception as error:  # a body cut short, a bad boundary, too many parts
            raise invalid(f"The multipart body could not be parsed: {getattr(error, 'detail', error)}", None,
                          "invalid_multipart") from None
        texts: dict[str, str] = {}
        files: dict[str, Any] = {}
        for key, value in form.multi_items():
            name = key.removesuffix("[]")  # OpenAI's client sends lists as image[]
            if hasattr(value, "read"):
                if name not in file_fields:
                    raise invalid(f"{name}: this endpoint takes no file {name!r}", name)
                if name in files:
                    raise invalid(f"{name}: one file per request", name)
                data = await value.read()
                files[name] = inspect(data, name, self.config.limits.max_pixels)
            else:
                if name in file_fields:
                    raise invalid(f"{name}: expected a file upload, got a text field", name, "invalid_image")
                texts[name] = value
        if "image" not in files:
            raise invalid("image: an image file is required", "image")
        try:
            return model.model_validate(texts), files
        except ValidationError as error:
            raise errors.from_validation(error) from None

    async def _serve(self, request: Request, body: ImageOptions, kind: str, files: dict | None = None):
        # 1. The model, the stage and the rows; every check before any replica is asked.
        files = files or {}
        model = self.config.model(body.model, kind)
        if model is None:
            if body.model is None:
                raise invalid(f"No model served here does {kind}.", "model", "model_not_supported")
            raise APIError(404, f"model: {body.model!r} is not served here (GET /v1/models lists them).", "model",
                           "model_not_found")
        if body.response_format == "url" and self.store is None:
            raise invalid("response_format: url needs url_storage in the serve config; use b64_json", "response_format")
        work, seeds = plan(body, model, kind, self.config.limits, files.get("image"), files.get("mask"))

        # 2. The model deployment, batched with other requests; a full one answers 503.
        result = await self._call(model.name, work)

        # 3. The answer: images (or the first failed row's error), and how to reproduce them.
        if result.errors:
            raise self._row_error(result.errors[0])
        data = []
        for image, seed in zip(result.images, seeds):
            item = {"seed": seed, "revised_prompt": None}
            if body.response_format == "url":
                item["url"] = await asyncio.to_thread(self.store.put, image, work.format, request)
            else:
                item["b64_json"] = base64.b64encode(image).decode("ascii")
            data.append(item)
        width, height = result.sizes[0]
        headers = {"x-synth-seed": ",".join(str(seed) for seed in seeds),
                   "x-synth-batch-size": str(result.batch_size), "x-synth-stage": kind}
        content = {"created": int(time.time()), "data": data, "model": model.name, "output_format": work.format,
                   "size": f"{width}x{height}"}
        return JSONResponse(content, headers=headers)

    async def _call(self, name: str, work: Work) -> Result:
        from ray.serve.exceptions import BackPressureError

        try:
            return await self.handles[name].generate.remote(work)
        except BackPressureError:
            retry = self.config.retry_after_s
            raise APIError(503, f"The model {name!r} is at capacity; retry after {retry:g} s.", None,
                           "overloaded", {"Retry-After": str(max(1, round(retry)))}) from None

    @staticmethod
    def _row_error(message: str) -> APIError:
        field = message.split(":", 1)[0]
        if field in _ROW_FIELDS:
            return invalid(message, field)
        if "refused the input" in message or "leaves no denoising step" in message:
            return invalid(message, None)
        return APIError(500, f"The image could not be generated: {message}", None, "generation_failed")


def build_app(config) -> Any:
    """The Serve application for a ServeConfig (or its dict): a model deployment per model,
    behind the ingress."""
    from ray.serve.config import AutoscalingConfig, BackpressureConfig

    from serve.config import ServeConfig
    from serve.deployment import ModelServer

    config = config if isinstance(config, ServeConfig) else ServeConfig.model_validate(config)
    backpressure = BackpressureConfig(status_code=503, retry_after_s=config.retry_after_s)
    models = {}
    for model in config.models:
        scaling = model.autoscaling
        models[model.name] = serve.deployment(ModelServer).options(
            name=f"model-{_deployment_name(model.name)}",
            ray_actor_options={"num_cpus": model.cpus, "num_gpus": model.gpus},
            autoscaling_config=AutoscalingConfig(
                min_replicas=scaling.min_replicas, max_replicas=scaling.max_replicas,
                initial_replicas=max(1, scaling.min_replicas),
                target_ongoing_requests=scaling.target_ongoing_requests,
                upscale_delay_s=scaling.upscale_delay_s, downscale_delay_s=scaling.downscale_delay_s,
                look_back_period_s=scaling.look_back_period_s, metrics_interval_s=scaling.metrics_interval_s),
            max_ongoing_requests=model.max_ongoing_requests,
            max_queued_requests=model.max_queued_requests,
            backpressure_config=backpressure,
            # A model load (imports, weights) can take minutes on a cold node.
            health_check_timeout_s=120,
        ).bind(model.model_dump(mode="json", exclude_unset=True), config.limits.max_pixels)
    ingress = config.ingress
    return serve.deployment(Gateway).options(
        name="ingress",
        num_replicas=ingress.replicas,
        ray_actor_options={"num_cpus": ingress.cpus},
        max_ongoing_requests=ingress.max_ongoing_requests,
        max_queued_requests=ingress.max_queued_requests,
        backpressure_config=backpressure,
    ).bind(config.model_dump(mode="json", exclude_unset=True), models)


def _deployment_name(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in name)


def app_builder(args: dict[str, str]) -> Any:
    """For `serve run serve.app:app_builder config=CONFIG.yaml` and serve/serve_config.yaml."""
    from serve.config import load_config

    return build_app(load_config(args.get("config")))
