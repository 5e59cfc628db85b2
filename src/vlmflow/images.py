"""Image intake: user images handed to a processor as transformers' `load_image` reads them.

Sources: a PIL image, a file path (str or Path), an http(s) URL (fetched like `load_image`:
redirects followed, the body opened by PIL) or a numpy array of shape (H, W) or (H, W, C)
(read by `PIL.Image.fromarray`: uint8 gives L / LA / RGB / RGBA, uint16 gives I;16, bool gives 1).

Every source gets the same treatment:
- orientation: the EXIF Orientation tag is applied (`ImageOps.exif_transpose`), as
  `load_image` and image viewers do, so a phone photo stored sideways reaches the model upright;
- mode: kept as stored (1, L, LA, P with or without transparency, RGB, RGBA, CMYK, YCbCr, ...),
  so each family's processor converts it its own way (`convert_to_rgb`: transparency composited
  onto white). Where that conversion would be wrong the rule is exact instead: 16-bit images
  (I;16 and its byte orders) become 8-bit L by their high byte (v >> 8, so 0..65535 maps onto
  0..255, as an 8-bit display shows them; PIL's own conversion would clip at 255); 32-bit
  integer (I) and float (F) images are taken on PIL's 0..255 scale when their values lie in it,
  and refused otherwise (and F images within 0..1, whose scale cannot be told);
- size: at most `max_pixels` pixels (default: Pillow's decompression-bomb limit, 89,478,485);
  the environment variable VLMFLOW_MAX_IMAGE_PIXELS raises or lowers it (`none`: no limit);
- integrity: a truncated file or a PNG chunk whose CRC does not match is an error, never a
  partly decoded picture (PIL's `ImageFile.LOAD_TRUNCATED_IMAGES` must stay off).

Every failure is a one-line `VlmflowError` that says what to do.
"""

from __future__ import annotations

import io
import os
import struct
import threading
import warnings
import zlib
from pathlib import Path
from typing import Any

from vlmflow.errors import VlmflowError

MAX_PIXELS_ENV = "VLMFLOW_MAX_IMAGE_PIXELS"
URL_TIMEOUT_S = 60.0
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_PIL_LIMIT = threading.Lock()  # guards the temporary change of PIL's global pixel limit


def pixel_limit(max_pixels: int | None = None) -> int | None:
    """The largest image (in pixels) vlmflow opens: `max_pixels`, else $VLMFLOW_MAX_IMAGE_PIXELS
    (a positive integer, or `none` for no limit), else Pillow's `Image.MAX_IMAGE_PIXELS`.

    Raises VlmflowError for a malformed environment value.
    """
    if max_pixels is not None:
        return int(max_pixels)
    value = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if value.lower() == "none":
        return None
    if value:
        try:
            limit = int(value.replace("_", "").replace(",", ""))
        except ValueError:
            limit = 0
        if limit <= 0:
            raise VlmflowError(
                f"{MAX_PIXELS_ENV}={value!r} is not a pixel count: set a positive integer "
                "(e.g. 200000000) or none"
            )
        return limit
    from PIL import Image

    return Image.MAX_IMAGE_PIXELS


def read_image(image: Any, max_pixels: int | None = None) -> Any:
    """The image a processor should get: a PIL image, upright, in its stored mode (see above).

    `image`: PIL image, path, http(s) URL or numpy array. Raises VlmflowError when it cannot be
    read exactly (missing, corrupt, truncated, too large, an unfetchable URL, a mode with no
    fixed 8-bit scale).
    """
    import numpy as np
    from PIL import Image, ImageOps

    limit = pixel_limit(max_pixels)
    if isinstance(image, Image.Image):
        name = "given as a PIL image"
        _check_size(image.size, limit, name)
        upright = ImageOps.exif_transpose(image)
    elif isinstance(image, np.ndarray):
        name = f"given as an array of shape {tuple(image.shape)}"
        upright = _from_array(image, name)
        _check_size(upright.size, limit, name)
    elif isinstance(image, str | Path):
        text = str(image)
        if text.startswith(("http://", "https://")):
            name, data = text, _fetch(text)
        else:
            path = Path(image)
            if not path.is_file():
                raise VlmflowError(
                    f"image not found: {path}: give the path of an image file (PNG, JPEG, ...) "
                    "or an http(s) URL"
                )
            name, data = str(path), path.read_bytes()
        upright = _decode(data, name, limit)
    else:
        raise VlmflowError(
            f"cannot use a {type(image).__name__} as an image: give a PIL image, a path, an "
            "http(s) URL or a numpy array (H, W[, C])"
        )
    return _eight_bit_scale(upright, name)


def open_image(image: Any, max_pixels: int | None = None) -> Any:
    """A PIL RGB image, converted the way the processors convert (`read_image`, then
    transformers' `convert_to_rgb`: transparency composited onto white), so that the model
    sees the same picture whether it is given this RGB image or the source itself.
    """
    from PIL import Image
    from transformers.image_transforms import convert_to_rgb

    im = read_image(image, max_pixels)
    if im.mode == "RGB":
        return im
    rgb: Any = convert_to_rgb(im, return_numpy=True)  # (H, W, 3) uint8
    return Image.fromarray(rgb)


def _fetch(url: str) -> bytes:
    """The body of an http(s) URL (redirects followed); HTTP and network errors raise."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=URL_TIMEOUT_S) as reply:
            return bytes(reply.read())
    except urllib.error.HTTPError as err:
        raise VlmflowError(
            f"cannot fetch image {url} (HTTP {err.code} {err.reason}): check the address"
        ) from None
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise VlmflowError(
            f"cannot fetch image {url} ({reason}): check the address and the network, or "
            "download it and give the file"
        ) from None


def _decode(data: bytes, name: str, limit: int | None) -> Any:
    """Open encoded image bytes fully (no partial decode), upright, in their stored mode."""
    from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise VlmflowError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is on, so truncated images would decode "
            "silently: set it to False before using vlmflow"
        )
    _check_png(data, name)
    # PIL checks its global pixel limit while it opens (2x: an error without the size) and
    # decodes; this read checks the size itself after the header, then decodes under `limit`.
    with _PIL_LIMIT:
        before = Image.MAX_IMAGE_PIXELS
        try:
            Image.MAX_IMAGE_PIXELS = None
            with Image.open(io.BytesIO(data)) as im:
                _check_size(im.size, limit, name)
                Image.MAX_IMAGE_PIXELS = limit
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                    im.load()
                    return ImageOps.exif_transpose(im)
        except Image.DecompressionBombError:
            raise VlmflowError(_too_large(name, limit, None)) from None
        except UnidentifiedImageError:
            raise VlmflowError(
                f"cannot read image {name}: it is not in an image format PIL reads: give a PNG or"
                " JPEG file (or another format PIL reads)"
            ) from None
        except (OSError, SyntaxError, ValueError) as err:
            raise VlmflowError(
                f"cannot read image {name} ({type(err).__name__}: {_first_line(err)}): give an "
                "intact PNG or JPEG file (or another format PIL reads)"
            ) from None
        finally:
            Image.MAX_IMAGE_PIXELS = before


def _check_png(data: bytes, name: str) -> None:
    """Raise unless every chunk of a PNG is complete and matches its CRC (PIL skips the CRC
    of image data chunks, so a flipped byte there would decode silently)."""
    if not data.startswith(_PNG_SIGNATURE):
        return
    pos = len(_PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        end = pos + 8 + length
        if end + 4 > len(data):
            break
        (crc,) = struct.unpack(">I", data[end : end + 4])
        if zlib.crc32(data[pos + 4 : end]) != crc:
            raise VlmflowError(
                f"cannot read image {name}: its PNG {kind.decode('latin-1')} chunk fails its CRC "
                "check (the file is corrupt): give an intact PNG or JPEG file"
            )
        if kind == b"IEND":
            return
        pos = end + 4
    raise VlmflowError(
        f"cannot read image {name}: the PNG file is truncated: give an intact PNG or JPEG file"
    )


def _check_size(size: tuple[int, int], limit: int | None, name: str) -> None:
    if limit is not None and size[0] * size[1] > limit:
        raise VlmflowError(_too_large(name, limit, size))


def _too_large(name: str, limit: int | None, size: tuple[int, int] | None) -> str:
    what = f"is {size[0]} x {size[1]} = {size[0] * size[1]:,} pixels," if size else "has"
    return (
        f"image {name} {what} more than the limit of {limit:,} pixels (a guard against "
        f"decompression bombs): set {MAX_PIXELS_ENV} to a larger pixel count (or none) to "
        "open it"
    )


def _from_array(array: Any, name: str) -> Any:
    from PIL import Image

    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3):
        raise VlmflowError(
            f"cannot use the image {name}: give an array of shape (H, W) or (H, W, C)"
        )
    try:
        return Image.fromarray(array)
    except (TypeError, ValueError) as err:
        raise VlmflowError(
            f"cannot use the image {name} and dtype {array.dtype} ({_first_line(err)}): give "
            "uint8 (H, W), (H, W, 3) or (H, W, 4), or uint16 (H, W)"
        ) from None


def _eight_bit_scale(im: Any, name: str) -> Any:
    """`im` unchanged where the processor's conversion to RGB reads it right; 16-bit images
    by their high byte; I / F images without a 0..255 scale refused."""
    import numpy as np
    from PIL import Image

    if im.mode in _SIXTEEN_BIT:
        values = np.asarray(im).astype(np.uint16)  # (H, W), native byte order
        return Image.fromarray((values >> 8).astype(np.uint8))
    if im.mode not in ("I", "F"):
        return im
    low, high = im.getextrema()
    kind = "32-bit integer" if im.mode == "I" else "32-bit float"
    if low < 0 or high > 255:
        raise VlmflowError(
            f"image {name} is a {kind} image (mode {im.mode}) with values {low}..{high}, outside "
            "0..255: scale it to 8 bits (mode L or RGB) as you mean it"
        )
    if im.mode == "F" and high <= 1:
        raise VlmflowError(
            f"image {name} is a float image (mode F) with values {low}..{high}: 0..1 or a dark "
            "0..255 image cannot be told apart: scale it to 8 bits (mode L or RGB)"
        )
    return im


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__
