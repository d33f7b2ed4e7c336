"""Encoded images (JPEG, PNG, ...) -> normalized float tensors, with Pillow and numpy only.

The recipe is torchvision's classification preset (`Resize(resize)`, `CenterCrop(crop)`,
`ToTensor()`, `Normalize(mean, std)`; torchvision.transforms docs): the shorter side is resized
with Pillow's bilinear filter (antialiased when shrinking), the long side truncated as torchvision
does, then a centered square is cut, pixels are scaled to [0, 1] and normalized per channel.
"""

from __future__ import annotations

import base64
import binascii
import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from modelbay.errors import InvalidInput, ModelLoadError, PayloadTooLarge
from modelbay.settings import ImageConfig

# Pillow parses many formats; only these common ones are opened (less parser attack surface).
FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
_CHANNELS = {"RGB": 3, "L": 1}


class ImageTransform:
    """Turns image bytes into one model input [C, H, W] float32, as `ImageConfig` says.

    Raises ModelLoadError at construction for an unsupported mode or mean/std of the wrong length.
    """

    def __init__(self, config: ImageConfig) -> None:
        if config.mode not in _CHANNELS:
            raise ModelLoadError(f"image mode {config.mode!r} is not supported; use one of {list(_CHANNELS)}")
        channels = _CHANNELS[config.mode]
        for label, values in (("mean", config.mean), ("std", config.std)):
            if values is not None and len(values) != channels:
                raise ModelLoadError(f"image {label} needs {channels} values for mode {config.mode}")
        self.config = config
        shape = (channels, 1, 1)
        self._mean = np.asarray(config.mean or [0.0] * channels, np.float32).reshape(shape)
        self._scale = (1.0 / np.asarray(config.std or [1.0] * channels, np.float32)).reshape(shape)

    def __call__(self, data: bytes) -> np.ndarray:
        """Encoded image bytes -> float32 array [C, H, W].

        Raises PayloadTooLarge for images over `max_pixels`, InvalidInput for anything Pillow
        cannot decode (or a truncated file), or an image smaller than the crop.
        """
        image = decode_image(data, self.config.max_pixels)
        try:
            image = image.convert(self.config.mode)
        except OSError as exc:  # truncated data only shows when pixels are read
            raise InvalidInput(f"image data is damaged or truncated: {exc}") from None
        if self.config.resize is not None:
            image = _resize_shorter_side(image, self.config.resize)
        if self.config.crop is not None:
            image = _center_crop(image, self.config.crop)
        pixels = np.asarray(image, dtype=np.float32) * (1.0 / 255.0)
        chw = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
        return np.ascontiguousarray((chw - self._mean) * self._scale)


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Open encoded image bytes lazily (header only) and check the pixel count before decoding.

    Raises PayloadTooLarge above `max_pixels`, InvalidInput when the bytes are no supported image.
    """
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        raise InvalidInput(
            f"could not decode an image from {len(data)} bytes starting with {data[:8]!r}; "
            f"expected one of {', '.join(FORMATS)}"
        ) from None
    width, height = image.size
    if width * height > max_pixels:
        raise PayloadTooLarge(f"image is {width}x{height} pixels, more than the limit of {max_pixels}")
    return image


def decode_base64(text: str) -> bytes:
    """Standard base64 (a `data:...;base64,` prefix allowed) -> bytes. Raises InvalidInput."""
    _, _, payload = text.rpartition("base64,")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(
            f"input is not valid base64 ({len(text)} characters starting {text[:16]!r})"
        ) from None


def _resize_shorter_side(image: Image.Image, size: int) -> Image.Image:
    width, height = image.size
    if width <= height:
        new = (size, int(size * height / width))
    else:
        new = (int(size * width / height), size)
    return image if new == image.size else image.resize(new, Image.Resampling.BILINEAR)


def _center_crop(image: Image.Image, size: int) -> Image.Image:
    width, height = image.size
    if width < size or height < size:
        raise InvalidInput(
            f"image is {width}x{height} pixels, smaller than the {size}x{size} the model takes"
        )
    left = round((width - size) / 2.0)
    top = round((height - size) / 2.0)
    return image.crop((left, top, left + size, top + size))
