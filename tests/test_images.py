"""Image decoding: every mode becomes correct 8-bit RGB, and oversized images are refused by name."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from imagekv.images import ImageFileError, load_rgb


def test_a_16_bit_png_is_scaled_to_8_bits_not_clipped(tmp_path):
    levels = np.arange(256, dtype=np.uint16).reshape(16, 16).repeat(2, axis=0).repeat(2, axis=1)
    path = tmp_path / "depth16.png"
    Image.fromarray(levels * 257).save(path)  # 0..65535
    with Image.open(path) as image:
        assert image.mode.startswith("I")
    rgb = np.asarray(load_rgb(path))
    assert rgb.dtype == np.uint8 and rgb.shape == (32, 32, 3)
    assert np.array_equal(rgb, np.stack([levels.astype(np.uint8)] * 3, axis=-1))


def test_a_floating_point_image_is_refused_by_name(tmp_path):
    path = tmp_path / "float.tif"
    Image.fromarray(np.full((20, 20), 0.5, dtype=np.float32)).save(path)
    with pytest.raises(ImageFileError, match="float.tif holds floating-point samples"):
        load_rgb(path)


def test_an_image_above_the_pixel_budget_is_refused_before_decoding(tmp_path):
    path = tmp_path / "large.png"
    Image.new("RGB", (300, 200)).save(path)
    message = r"large.png is 300x200 px = 60000 pixels, more than the 50000 .*max_image_pixels"
    with pytest.raises(ImageFileError, match=message):
        load_rgb(path, max_pixels=50_000)
    assert load_rgb(path, max_pixels=60_000).size == (300, 200)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height` (no pixel data): what a decompression bomb shows first."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale (PNG spec, IHDR)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def test_a_decompression_bomb_is_refused_by_name_even_with_the_largest_budget(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(20_000, 10_000))
    with pytest.raises(ImageFileError, match="image .*bomb.png is too large for Pillow to decode safely"):
        load_rgb(path, max_pixels=178_956_970)


def test_extraction_applies_the_configured_pixel_budget(tmp_path):
    from imagekv.datasets.synthetic import synthesize
    from imagekv.extract import extract
    from test_extract_store import REFCOCO, make_spec

    synthesize("refcoco", tmp_path / "refcoco", REFCOCO, seed=3)
    manifest = tmp_path / "store" / "manifest.json"
    with pytest.raises(ImageFileError, match=r"image \S+\.jpg is \d+x\d+ px .* extraction.max_image_pixels"):
        extract(make_spec(tmp_path / "refcoco", max_image_pixels=1000), manifest)
    assert not manifest.exists()
    with pytest.raises(ValueError, match="'max_image_pixels' must be a positive int"):
        extract(make_spec(tmp_path / "refcoco", max_image_pixels=0), manifest)
