"""`synth serve [CONFIG]`: start the endpoint on a local Ray (or the cluster at RAY_ADDRESS)
and keep it up until interrupted."""

from __future__ import annotations

import logging
import os
import signal
import time

logger = logging.getLogger("synth.serve")


def _connect() -> None:
    """A local Ray of this machine, or the cluster at RAY_ADDRESS with this code shipped."""
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        import pipeline
        import serve

        logger.info("joining the Ray cluster at %s", address)
        modules = [os.path.dirname(pipeline.__file__), os.path.dirname(serve.__file__)]
        ray.init(address=address, runtime_env={"py_modules": modules})
    else:
        ray.init(address="local", include_dashboard=False)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def serve_forever(config_path: str | None = None, host: str | None = None, port: int | None = None) -> int:
    from ray import serve as ray_serve

    from serve.app import build_app
    from serve.config import load_config

    config = load_config(config_path)
    config = config.model_copy(update={k: v for k, v in (("host", host), ("port", port)) if v is not None})
    _connect()
    # After Ray's start (which installs handlers of its own): a service manager's stop, as Ctrl-C.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        ray_serve.start(http_options={"host": config.host, "port": config.port,
                                      "request_timeout_s": config.request_timeout_s})
        logger.info("starting %s (the first start loads each model)...", ", ".join(m.name for m in config.models))
        ray_serve.run(build_app(config), name="synth", route_prefix="/", blocking=False)
        url = f"http://{config.host}:{config.port}"
        logger.info("serving at %s: the playground at %s/, the API at %s/v1, its docs at %s/docs", url, url, url, url)
        logger.info("try: curl -s %s/v1/images/generations -H 'Content-Type: application/json' "
                    "-d '{\"prompt\": \"a red circle on a white background\"}'", url)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        logger.info("stopping")
    finally:
        ray_serve.shutdown()
    return 0
