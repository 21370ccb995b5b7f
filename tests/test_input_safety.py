"""Untrusted table cells stay inert: image and mask cells read only regular files, S3 objects
and (when allowed) HTTP answers, each bounded in bytes and time; only raster formats are
decoded; a prompt of invisible characters is empty. Each problem fails its row alone."""

import asyncio
import http.server
import io
import os
import threading
import time

import pytest
from conftest import job, png_bytes, read_metadata, stage, write_table
from PIL import Image

from pipeline import batch as B
from pipeline.io.prepare import RowRules, canonical_batch

pytestmark = pytest.mark.timeout(30)  # a blocking open or an unbounded read fails instead of hanging

EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n0 0 moveto 8 8 lineto stroke\nshowpage\n"


def prepare(images: list, base_dir: str = "/", **rules) -> list[str]:
    """Each row's error ('' for a row that is ok) for these image cells."""
    rules = RowRules(base_dir=base_dir, roles={"prompt": "prompt", "image": "image"}, overrides={}, **rules)
    rows = canonical_batch({"prompt": ["p"] * len(images), "image": images}, rules)
    return list(rows[B.ERROR])


def test_only_regular_files_are_read(tmp_path):
    os.mkfifo(tmp_path / "fifo")  # opening it for reading would block until a writer comes
    os.symlink("/dev/zero", tmp_path / "zero-link")
    (tmp_path / "ok.png").write_bytes(png_bytes())
    cells = ["/dev/zero", str(tmp_path / "fifo"), "fifo", str(tmp_path), "zero-link", "/proc/self/environ",
             "file:///proc/self/environ", "/sys/kernel/uevent_seqnum", "ok.png", f"file://{tmp_path}/ok.png"]
    started = time.monotonic()
    errors = prepare(cells, base_dir=str(tmp_path))
    assert time.monotonic() - started < 10
    assert errors[0] == "image: cannot fetch /dev/zero: not a regular file (a character device); only regular files are read"
    assert errors[1] == errors[2] == (f"image: cannot fetch {tmp_path}/fifo: not a regular file (a FIFO); "
                                      "only regular files are read")
    assert errors[3].endswith(": not a regular file (a directory); only regular files are read")
    assert errors[4].endswith("zero-link: not a regular file (a character device); only regular files are read")
    assert errors[5] == "image: cannot fetch /proc/self/environ: files under /proc and /sys are not read"
    assert errors[6] == "image: cannot fetch file:///proc/self/environ: files under /proc and /sys are not read"
    assert errors[7].endswith("files under /proc and /sys are not read")
    assert errors[8:] == ["", ""]


def test_images_over_the_byte_limit_fail_their_row_without_a_full_read(tmp_path):
    small = png_bytes()
    (tmp_path / "big.png").write_bytes(small + b"\0" * 5000)
    (tmp_path / "small.png").write_bytes(small)
    errors = prepare(["big.png", "small.png", small + b"\0" * 5000, small], base_dir=str(tmp_path),
                     max_image_bytes=4096)
    assert errors[0] == f"image: cannot fetch {tmp_path}/big.png: {len(small) + 5000} bytes, over input.max_image_bytes (4096)"
    assert errors[2] == f"image: the 'image' cell holds {len(small) + 5000} bytes, over input.max_image_bytes (4096)"
    assert errors[1] == errors[3] == ""
    # without max_image_bytes the limit derives from the pixel budget: 8 bytes a pixel + 1 MiB
    assert RowRules(max_image_pixels=1000).byte_limit() == 8000 + 2**20
    assert RowRules().byte_limit() == 50_000_000 * 8 + 2**20


def test_s3_objects_are_read_with_one_bounded_ranged_get(s3):
    bucket, options, fs = s3
    small = png_bytes()
    fs.pipe({f"{bucket}/ok.png": small, f"{bucket}/big.png": small + b"\0" * 5000, f"{bucket}/empty.png": b"",
             f"{bucket}/a::memory/x.png": small})
    errors = prepare([f"{bucket}/ok.png", f"{bucket}/big.png", f"{bucket}/empty.png", f"{bucket}/missing.png",
                      f"{bucket}/a::memory/x.png"], storage_options=options, max_image_bytes=4096)
    assert errors[0] == errors[4] == ""  # "::" is part of the key, never a chain of filesystems
    assert errors[1] == f"image: cannot fetch {bucket}/big.png: more than 4096 bytes, over input.max_image_bytes (4096)"
    assert errors[2] == f"image: cannot fetch {bucket}/empty.png: the object is empty"
    assert errors[3].startswith(f"image: cannot fetch {bucket}/missing.png: FileNotFoundError")


@pytest.mark.parametrize("uri, scheme", [
    ("http://127.0.0.1:9/x.png", "http://"), ("https://169.254.169.254/latest/meta-data", "https://"),
    ("ftp://127.0.0.1/x.png", "ftp://"), ("memory://x.png", "memory://"), ("gs://bucket/x.png", "gs://"),
    ("data:image/png;base64,iVBORw0KGgo=", "data:"), ("simplecache::s3://bucket/x.png", "simplecache:"),
])
def test_other_schemes_are_refused_unread(uri, scheme):
    import fsspec

    fsspec.filesystem("memory").pipe_file("/x.png", png_bytes())  # it exists: still refused
    [error] = prepare([uri])
    assert error.startswith(f"image: cannot fetch {uri}: {scheme} is not ")
    assert "image cells take a local path, file:// or s3://" in error
    assert ("input.allow_http is false" in error) == scheme.startswith("http")


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    released = threading.Event()  # ends the handler that never answers


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path == "/x.png":
            body = png_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path == "/endless":  # no length, a body that never ends (bounded here by 30 s)
            self.send_response(200)
            self.end_headers()
            deadline = time.monotonic() + 30
            try:
                while time.monotonic() < deadline:
                    self.wfile.write(b"\0" * 65536)
            except OSError:
                pass  # the client hung up at its byte limit
        elif self.path == "/silent":
            self.server.released.wait(30)
        elif self.path == "/to-file":
            self.send_response(302)
            self.send_header("Location", "file:///etc/passwd")
            self.end_headers()
        else:
            self.send_error(404)


@pytest.fixture
def http_url():
    server = _Server(("127.0.0.1", 0), _Handler)
    server.released = threading.Event()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.released.set()
    server.shutdown()
    server.server_close()


def test_http_is_fetched_only_when_allowed_bounded_in_bytes_and_time(http_url):
    urls = [f"{http_url}/x.png", f"{http_url}/endless", f"{http_url}/silent", f"{http_url}/missing.png",
            f"{http_url}/to-file"]
    assert all("input.allow_http is false" in error for error in prepare(urls))
    started = time.monotonic()
    errors = prepare(urls, allow_http=True, http_timeout_s=2, max_image_bytes=100_000)
    assert time.monotonic() - started < 10
    assert errors[0] == ""
    assert errors[1] == (f"image: cannot fetch {http_url}/endless: more than 100000 bytes, "
                         "over input.max_image_bytes (100000)")
    assert errors[2] == f"image: cannot fetch {http_url}/silent: no complete answer within input.http_timeout_s (2 s)"
    assert errors[3] == f"image: cannot fetch {http_url}/missing.png: HTTP 404 Not Found"
    assert errors[4].startswith(f"image: cannot fetch {http_url}/to-file: ")  # a redirect to file:// is not followed
    assert "root:" not in errors[4]

    async def from_a_coroutine():  # as Serve would call it, inside its event loop
        return prepare([f"{http_url}/x.png"], allow_http=True)

    assert asyncio.run(from_a_coroutine()) == [""]


def encoded(image_format: str, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (16, 16), 128).save(buffer, format=image_format)
    return buffer.getvalue()


def test_only_raster_formats_are_decoded_and_eps_never_reaches_ghostscript(monkeypatch):
    from PIL import EpsImagePlugin

    def never(*args, **kwargs):
        raise AssertionError("the EPS plugin was asked to open untrusted bytes")

    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", never)
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", never)
    allowed = [encoded(name) for name in ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")]
    errors = prepare([*allowed, EPS, encoded("PPM"), b"not an image at all"])
    assert errors[:6] == [""] * 6
    assert errors[6] == ("image: cannot decode the image: EPS is not an allowed image format "
                         "(allowed: PNG, JPEG, WebP, GIF, BMP, TIFF)")
    assert errors[7].startswith("image: cannot decode the image: PPM is not an allowed image format")
    assert errors[8] == "image: cannot decode the image: not an image in an allowed format (PNG, JPEG, WebP, GIF, BMP, TIFF)"


def test_a_prompt_of_invisible_characters_is_empty():
    invisible = ["\u200b", "\u200c\u200d", " \u2060\ufeff\t", "\u180e", "\u00ad\u3164", "\U000e0041"]
    rules = RowRules(roles={"prompt": "prompt"}, overrides={})
    rows = canonical_batch({"prompt": [*invisible, "a\u200bred circle"]}, rules)
    assert list(rows[B.ERROR]) == ["prompt: the prompt is empty"] * len(invisible) + [""]
    upscale = canonical_batch({"prompt": invisible}, RowRules(roles={"prompt": "prompt"}, overrides={},
                                                              prompt_required=False))
    assert list(upscale[B.STATUS]) == ["ok"] * len(invisible)  # a stage without a prompt does not need one


@pytest.mark.timeout(300)  # starts Ray and loads a model
def test_hostile_rows_fail_alone_and_the_job_ends(ray_cluster, tiny, tmp_path):
    from pipeline.runner import run_job
    from pipeline.spec import parse_spec

    table = write_table(tmp_path / "t.parquet", {
        "id": ["good-1", "good-2", "zero", "http", "eps", "blank"],
        "prompt": ["a red circle", "a blue square", "x", "x", "x", "\u200b\u2060"],
        "image": [png_bytes(), png_bytes((30, 30, 200)), b"/dev/zero", b"http://127.0.0.1:9/x.png", EPS, png_bytes()],
    })
    raw = job(table, str(tmp_path / "out"), [stage("img2img", tiny["img2img"], width=32, height=32)],
              input={"path": table, "id_column": "id"})
    summary = run_job(parse_spec(raw))
    assert (summary.rows_ok, summary.rows_failed) == (2, 4)
    rows = {row["id"]: row for row in read_metadata(str(tmp_path / "out"))}
    assert rows["good-1"]["status"] == rows["good-2"]["status"] == "ok"
    expected = {
        "zero": "image: cannot fetch /dev/zero: not a regular file (a character device)",
        "http": "image: cannot fetch http://127.0.0.1:9/x.png: http:// is not allowed while input.allow_http is false",
        "eps": "image: cannot decode the image: EPS is not an allowed image format",
        "blank": "prompt: the prompt is empty",
    }
    for row_id, message in expected.items():
        assert rows[row_id]["status"] == "failed" and rows[row_id]["error"].startswith(message), rows[row_id]["error"]
