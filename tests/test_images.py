"""Image intake equals transformers' own: what `handle.prepare` hands the model for a file, a
PIL image, an array or a URL is exactly what the family's processor makes of the image as
transformers' `load_image` reads it (EXIF orientation applied, stored mode kept), on every tiny
family; inputs it cannot take exactly end in one-line errors, also through the CLI and `run`.
"""

from __future__ import annotations

import argparse
import functools
import io
import struct
import subprocess
import sys
import threading
import zlib
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile, ImageOps

import vlmflow
from vlmflow.errors import VlmflowError
from vlmflow.images import MAX_PIXELS_ENV, open_image, read_image
from vlmflow.models.tiny import TINY_FAMILIES

ORIENTATION = 0x0112
SIZES = ((40, 30), (23, 52))  # (width, height): landscape and portrait, small for speed
ORIENTATIONS = (1, 6, 3)
# mode -> format it is stored in (YCbCr: PIL writes it into TIFF; JPEG stores it as RGB)
STORED = {
    "1": "PNG",
    "L": "PNG",
    "LA": "PNG",
    "P": "PNG",
    "P+transparency": "PNG",
    "RGB": "PNG",
    "RGBA": "PNG",
    "CMYK": "JPEG",
    "I;16": "PNG",
    "I": "TIFF",
    "F": "TIFF",
    "YCbCr": "TIFF",
    "RGB-jpeg": "JPEG",
}
ARRAY_MODES = ("1", "L", "LA", "RGB", "RGBA", "I;16")  # modes PIL.Image.fromarray round-trips
URL_MODES = ("RGB-jpeg", "RGBA", "I;16", "P+transparency")


def synthetic(mode: str, size: tuple[int, int], seed: int) -> Image.Image:
    """A random image of `mode` (values within the mode's 8-bit scale for I and F)."""
    rng = np.random.RandomState(seed)
    w, h = size
    rgb = Image.fromarray((rng.rand(h, w, 3) * 255).astype(np.uint8))
    if mode == "I;16":
        return Image.fromarray((rng.rand(h, w) * 65535).astype(np.uint16))
    if mode == "I":
        return Image.fromarray((rng.rand(h, w) * 255).astype(np.int32))
    if mode == "F":
        return Image.fromarray((rng.rand(h, w) * 255).astype(np.float32))
    if mode == "RGBA":
        return Image.fromarray(
            np.dstack([np.asarray(rgb), (rng.rand(h, w) * 255).astype(np.uint8)])
        )
    if mode == "P+transparency":
        paletted = rgb.convert("P")
        paletted.info["transparency"] = int(np.asarray(paletted)[0, 0])
        return paletted
    if mode == "RGB-jpeg":
        return rgb
    return rgb.convert(mode)


def save(image: Image.Image, path: Path, fmt: str, orientation: int) -> None:
    exif = image.getexif()
    if orientation != 1:
        exif[ORIENTATION] = orientation
    extra: dict[str, Any] = {"exif": exif if fmt == "TIFF" else exif.tobytes()}
    if "transparency" in image.info:
        extra["transparency"] = image.info["transparency"]
    image.save(path, fmt, **extra)


def reference(image: Image.Image) -> Image.Image:
    """The image as transformers' `load_image` reads it, before its RGB conversion: upright,
    stored mode kept; 16-bit images by their high byte (vlmflow's documented rule)."""
    upright = ImageOps.exif_transpose(image)
    if upright.mode.startswith("I;16"):
        high = np.asarray(upright).astype(np.uint16) >> 8
        return Image.fromarray(high.astype(np.uint8))
    return upright


@pytest.fixture(scope="module")
def handles(tiny_path: Any) -> dict[str, Any]:
    return {family: vlmflow.load(str(tiny_path(family))) for family in TINY_FAMILIES}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, tuple[int, int], int], Path]:
    """(mode, size, orientation) -> a stored image file."""
    root = tmp_path_factory.mktemp("modes")
    out = {}
    for i, (mode, fmt) in enumerate(STORED.items()):
        for size in SIZES:
            for orientation in ORIENTATIONS:
                path = root / f"{mode.replace(';', '_').replace('+', '_')}-{size[0]}x{size[1]}"
                path = path.with_name(f"{path.name}-o{orientation}.{fmt.lower()}")
                save(synthetic(mode, size, i), path, fmt, orientation)
                out[(mode, size, orientation)] = path
    return out


@pytest.fixture(scope="module")
def server(files: dict[Any, Path]) -> Iterator[str]:
    """A loopback HTTP server over the stored files; yields its base URL."""
    folder = next(iter(files.values())).parent

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def assert_same_as_processor(handle: Any, given: Any, ref: Image.Image, case: str) -> None:
    """prepare(given) hands the model exactly what the processor makes of `ref`."""
    prompt = handle.prepare(given, "describe the image .")
    images = [[ref]] if handle.family == "idefics3" else [ref]
    text = handle.roles.processor_text(1, "describe the image .")
    expected = handle.processor(text=[text], images=images, return_tensors="pt", padding=True)
    expected.pop("labels", None)  # PaliGemma's training targets: not a model input
    tensors = [k for k, v in expected.items() if isinstance(v, torch.Tensor)]
    assert "pixel_values" in tensors, case
    for key in tensors:
        got = prompt.inputs[key].cpu()
        assert got.dtype == expected[key].dtype, f"{case}: {key} dtype"
        assert torch.equal(got, expected[key]), f"{case}: {key} differs"
    assert prompt.layout.images[0][0].size == ref.size, case


def cases(kind: str, files: dict[Any, Path]) -> list[tuple[str, Any, Image.Image]]:
    """(label, what prepare is given, reference image) for one input kind."""
    out = []
    for (mode, size, orientation), path in files.items():
        label = f"{kind} {mode} {size} orientation {orientation}"
        if kind == "path":
            out.append((label, str(path), reference(Image.open(path))))
        elif kind == "pil" and orientation != 3:
            out.append((label, Image.open(path), reference(Image.open(path))))
        elif kind == "array" and mode in ARRAY_MODES and orientation == 1:
            array = np.asarray(Image.open(path))
            out.append((label, array, reference(Image.fromarray(array))))
        elif kind == "url" and mode in URL_MODES and size == SIZES[0]:
            out.append((label, path.name, reference(Image.open(path))))
    return out


@pytest.mark.parametrize("kind", ["path", "pil", "array", "url"])
@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_prepare_equals_the_processor_on_the_reference_image(
    handles: dict[str, Any], files: dict[Any, Path], server: str, family: str, kind: str
) -> None:
    handle = handles[family]
    matrix = cases(kind, files)
    assert len(matrix) >= 6
    for label, given, ref in matrix:
        source = f"{server}/{given}" if kind == "url" else given
        assert_same_as_processor(handle, source, ref, f"{family} {label}")


def test_reference_matches_transformers_load_image(files: dict[Any, Path]) -> None:
    """For RGB sources the reference is `load_image` itself; orientation swaps the sides."""
    from transformers.image_utils import load_image

    for (mode, size, orientation), path in files.items():
        if mode not in ("RGB", "RGB-jpeg"):
            continue
        loaded = load_image(str(path))
        assert np.array_equal(np.asarray(open_image(path)), np.asarray(loaded)), path.name
        swapped = orientation in (5, 6, 7, 8)
        assert loaded.size == (size[::-1] if swapped else size)


def test_exif_orientation_reaches_the_model_upright(
    handles: dict[str, Any], tmp_path: Path
) -> None:
    """A JPEG stored 130 x 90 with Orientation 6 is 90 x 130, as load_image and viewers show."""
    from transformers.image_utils import load_image

    rng = np.random.RandomState(0)
    image = Image.fromarray((rng.rand(90, 130, 3) * 255).astype(np.uint8))
    path = tmp_path / "exif6.jpg"
    save(image, path, "JPEG", 6)
    handle = handles["llava"]
    prompt = handle.prepare(str(path), "describe the image .")
    assert prompt.layout.images[0][0].size == load_image(str(path)).size == (90, 130)
    assert_same_as_processor(handle, str(path), load_image(str(path)), "exif6")


def test_sixteen_bit_ramp_keeps_its_scale(handles: dict[str, Any], tmp_path: Path) -> None:
    """A 16-bit ramp 0..65535 is a mid-grey ramp (mean 127.5 of 255), not 99% white."""
    ramp = np.linspace(0, 65535, 130)[None, :].repeat(90, 0).astype(np.uint16)
    path = tmp_path / "ramp16.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode == "I;16"
    rgb = np.asarray(open_image(path))
    assert rgb.shape == (90, 130, 3)
    assert abs(rgb.mean() - 127.5) < 0.5 and (rgb == 255).mean() < 0.01
    assert np.array_equal(np.asarray(read_image(ramp)), (ramp >> 8).astype(np.uint8))
    big_endian = Image.frombytes("I;16B", (130, 90), ramp.astype(">u2").tobytes())
    assert np.array_equal(np.asarray(read_image(big_endian)), (ramp >> 8).astype(np.uint8))
    grey = Image.fromarray((ramp >> 8).astype(np.uint8))
    assert_same_as_processor(handles["qwen2_vl"], str(path), grey, "ramp16")


def test_thirty_two_bit_images_without_an_eight_bit_scale_are_refused() -> None:
    wide = Image.fromarray(np.arange(600, dtype=np.int32).reshape(20, 30))
    with pytest.raises(VlmflowError, match=r"values 0\.\.599, outside 0\.\.255"):
        read_image(wide)
    unit = Image.fromarray(np.linspace(0, 1, 600, dtype=np.float32).reshape(20, 30))
    with pytest.raises(VlmflowError, match=r"0\.\.1 or a dark"):
        read_image(unit)
    within = Image.fromarray(np.arange(200, dtype=np.int32).reshape(10, 20))
    assert read_image(within).mode == "I"


def test_pixel_limit_names_its_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    huge = tmp_path / "huge.png"
    Image.new("1", (14000, 14000), 1).save(huge)
    assert huge.stat().st_size < 100_000
    monkeypatch.delenv(MAX_PIXELS_ENV, raising=False)
    with pytest.raises(VlmflowError, match=r"14000 x 14000 = 196,000,000 pixels.*VLMFLOW_MAX_IMA"):
        read_image(huge)
    middle = tmp_path / "middle.png"
    Image.new("L", (1200, 1000), 7).save(middle)  # over 1,000,000 but under 2x: PIL only warns
    monkeypatch.setenv(MAX_PIXELS_ENV, "1000000")
    with pytest.raises(VlmflowError, match="more than the limit of 1,000,000 pixels"):
        read_image(middle)
    with pytest.raises(VlmflowError, match="more than the limit of 1,000,000 pixels"):
        read_image(np.zeros((1000, 1200), np.uint8))
    monkeypatch.setenv(MAX_PIXELS_ENV, "1200000")
    assert read_image(middle).size == (1200, 1000)
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    with pytest.raises(VlmflowError, match="positive integer"):
        read_image(middle)
    # a limit above Pillow's own (here lowered) opens the image and leaves Pillow's as it was
    monkeypatch.delenv(MAX_PIXELS_ENV)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert read_image(middle, max_pixels=2_000_000).size == (1200, 1000)
    assert Image.MAX_IMAGE_PIXELS == 1000


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    rng = np.random.RandomState(3)
    Image.fromarray((rng.rand(30, 40, 3) * 255).astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def test_corrupt_images_are_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = bytearray(png_bytes())
    at = data.find(b"IDAT")
    (length,) = struct.unpack(">I", data[at - 4 : at])
    crc_only = bytearray(data)
    crc_only[at + 4 + length] ^= 0xFF  # image data intact, its CRC wrong: PIL decodes it
    assert np.asarray(Image.open(io.BytesIO(bytes(crc_only)))).shape == (30, 40, 3)
    (tmp_path / "crc.png").write_bytes(crc_only)
    with pytest.raises(VlmflowError, match="IDAT chunk fails its CRC"):
        read_image(tmp_path / "crc.png")
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(VlmflowError, match="truncated"):
        read_image(tmp_path / "cut.png")
    jpeg = io.BytesIO()
    Image.open(io.BytesIO(bytes(data))).save(jpeg, "JPEG")
    (tmp_path / "cut.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    with pytest.raises(VlmflowError, match=r"truncated.*intact PNG or JPEG"):
        read_image(tmp_path / "cut.jpg")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(VlmflowError, match="LOAD_TRUNCATED_IMAGES"):
        read_image(tmp_path / "cut.jpg")
    assert zlib.crc32(b"IEND") == struct.unpack(">I", data[-4:])[0]  # the walk ends at IEND


def test_unreadable_sources_are_one_line_errors(server: str, tmp_path: Path) -> None:
    with pytest.raises(VlmflowError, match="HTTP 404"):
        read_image(f"{server}/missing.png")
    with pytest.raises(VlmflowError, match="image not found"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(VlmflowError, match=r"\(H, W\) or \(H, W, C\)"):
        read_image(np.zeros((2, 3, 4, 5), np.uint8))
    with pytest.raises(VlmflowError, match="give uint8"):
        read_image(np.zeros((3, 20, 30), np.uint8))  # channels first
    with pytest.raises(VlmflowError, match="cannot use a dict"):
        read_image({"image": "x"})
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(VlmflowError, match="not in an image format PIL reads") as error:
        read_image(text)
    assert "object at" not in str(error.value) and "\n" not in str(error.value)


def test_model_limits_are_one_line_errors(handles: dict[str, Any]) -> None:
    rng = np.random.RandomState(0)
    tall = Image.fromarray((rng.rand(8000, 30, 3) * 255).astype(np.uint8))
    with pytest.raises(VlmflowError, match=r"qwen2_vl processor refuses.*aspect ratio"):
        handles["qwen2_vl"].prepare(tall)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_special_tokens_in_the_prompt_are_refused(
    handles: dict[str, Any], photo: Any, family: str
) -> None:
    """Processors would read them as image slots or control tokens, not as the text typed."""
    handle = handles[family]
    image_token = handle.processor.image_token
    with pytest.raises(VlmflowError, match=r"special token.*reword"):
        handle.prepare(photo, f"what does {image_token} mean ?")
    with pytest.raises(VlmflowError, match="special token"):
        handle.prepare_batch([([photo], "describe the image ."), ([photo], image_token)])
    assert handle.prepare(photo, "what does image mean ?").input_ids.shape[0] == 1


def vlmflow_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vlmflow", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def test_cli_prints_one_line_for_each_bad_input(tiny_path: Any, tmp_path: Path) -> None:
    rng = np.random.RandomState(0)
    Image.fromarray((rng.rand(8000, 30, 3) * 255).astype(np.uint8)).save(tmp_path / "tall.png")
    Image.new("1", (14000, 14000), 1).save(tmp_path / "huge.png")
    data = bytearray(png_bytes())
    data[data.find(b"IDAT") + 10] ^= 0x01  # a flipped image byte: CRC mismatch
    (tmp_path / "crc.png").write_bytes(data)
    Image.fromarray((rng.rand(40, 50, 3) * 255).astype(np.uint8)).save(tmp_path / "ok.png")
    qwen, llava = str(tiny_path("qwen2_vl")), str(tiny_path("llava"))
    bad = {
        "aspect ratio": ["describe", str(tmp_path / "tall.png"), "--model", qwen],
        "VLMFLOW_MAX_IMAGE_PIXELS": ["describe", str(tmp_path / "huge.png"), "--model", llava],
        "fails its CRC": ["describe", str(tmp_path / "crc.png"), "--model", llava],
        "'<image>', a special token": [
            "describe",
            str(tmp_path / "ok.png"),
            "--prompt",
            "What does <image> mean?",
        ],  # the default model vlmflow-tiny
    }
    for expected, argv in bad.items():
        result = vlmflow_cli(*argv)
        assert result.returncode == 1, (expected, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("vlmflow describe: error: "), lines
        assert expected in lines[0] and "Traceback" not in result.stderr


def test_run_records_bad_images_and_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from vlmflow.experiments import command
    from vlmflow.store import ResultStore

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.RandomState(0)
    save(
        Image.fromarray((rng.rand(90, 130, 3) * 255).astype(np.uint8)), images / "a.jpg", "JPEG", 6
    )
    ramp = np.linspace(0, 65535, 130)[None, :].repeat(90, 0).astype(np.uint16)
    Image.fromarray(ramp).save(images / "b.png")
    data = bytearray(png_bytes())
    data[data.find(b"IDAT") + 10] ^= 0x01
    (images / "c.png").write_bytes(data)
    out = tmp_path / "out"
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    argv = ["check", "--images", str(images), "--out", str(out), "--no-progress"]
    assert command.run(parser.parse_args(argv)) == 0
    assert "2 done, 1 failed" in capsys.readouterr().out
    with ResultStore.open(out) as store:
        [failure] = store.failures()
        assert failure.item == "c.png" and "CRC" in failure.message
        rows = {r.item: r.metrics for r in store.rows()}
    assert (rows["a.jpg"]["width"], rows["a.jpg"]["height"]) == (90, 130)
    assert abs(rows["b.png"]["mean"] - 127.5) < 0.5
