"""`synth serve` with no config, as a user runs it: its own local Ray, the built-in shapes
model on the port given, one request that draws what it says, and a clean stop (SIGTERM)."""

import base64
import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import _free_port

pytestmark = pytest.mark.timeout(300)


def test_synth_serve_draws_a_red_circle_on_a_white_background():
    from PIL import Image

    from pipeline.shapes.judge import read_image

    port = _free_port()
    env = {name: value for name, value in os.environ.items() if name != "RAY_ADDRESS"}
    server = subprocess.Popen([sys.executable, "-m", "pipeline", "serve", "--port", str(port)],
                              cwd=Path(__file__).parents[1], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        body = json.dumps({"prompt": "a red circle on a white background", "seed": 42}).encode()
        deadline, answer = time.time() + 240, None
        while answer is None and time.time() < deadline and server.poll() is None:
            request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/images/generations", data=body,
                                             headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=120) as response:
                    answer = json.loads(response.read())
            except OSError:  # not listening yet, or the model still loading (503)
                time.sleep(1)
        assert answer is not None, "synth serve never answered"
        image = Image.open(io.BytesIO(base64.b64decode(answer["data"][0]["b64_json"])))
        assert image.size == (32, 32) and answer["data"][0]["seed"] == 42
        reading = read_image(np.asarray(image.convert("RGB")))
        assert (reading.colour, reading.shape, reading.background) == ("red", "circle", "white")
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            output, _ = server.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            output, _ = server.communicate()
    assert server.returncode == 0, output[-3000:]
    assert "synth: stopping" in output
