"""Untrusted table cells stay inert: only raster formats are decoded; a prompt of invisible
characters is empty. Each problem fails its row alone."""

import io

from PIL import Image

from pipeline import batch as B
from pipeline.io.prepare import RowRules, canonical_batch

EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n0 0 moveto 8 8 lineto stroke\nshowpage\n"


def prepare(images: list, base_dir: str = "/", **rules) -> list[str]:
    """Each row's error ('' for a row that is ok) for these image cells."""
    rules = RowRules(base_dir=base_dir, roles={"prompt": "prompt", "image": "image"}, overrides={}, **rules)
    rows = canonical_batch({"prompt": ["p"] * len(images), "image": images}, rules)
    return list(rows[B.ERROR])


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
