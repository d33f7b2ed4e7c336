"""Image preprocessing: torchvision's classification recipe, done with Pillow and numpy."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_image

from modelbay.codecs.images import ImageTransform, decode_base64
from modelbay.errors import InvalidInput, PayloadTooLarge
from modelbay.settings import ImageConfig

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


def jpeg(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def test_resize_crop_normalize_matches_the_recipe_computed_by_hand() -> None:
    photo = jpeg(load_sample_image("china.jpg"))  # 640x427
    tensor = ImageTransform(ImageConfig(mode="RGB", resize=256, crop=224, mean=MEAN, std=STD))(photo)
    assert tensor.shape == (3, 224, 224) and tensor.dtype == np.float32
    # The same steps written out with Pillow and torch: shorter side 256 (long side truncated),
    # center crop 224 with rounded offsets, /255, then (x - mean) / std per channel.
    image = Image.open(io.BytesIO(photo)).convert("RGB").resize((383, 256), Image.Resampling.BILINEAR)
    left, top = round((383 - 224) / 2), round((256 - 224) / 2)
    pixels = (
        torch.tensor(np.asarray(image.crop((left, top, left + 224, top + 224))), dtype=torch.float32) / 255
    )
    expected = (pixels.permute(2, 0, 1) - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[
        :, None, None
    ]
    np.testing.assert_allclose(tensor, expected.numpy(), atol=1e-5)


def test_grayscale_keeps_one_channel() -> None:
    digit = (np.arange(64, dtype=np.uint8) * 4).reshape(8, 8)
    buffer = io.BytesIO()
    Image.fromarray(digit).save(buffer, format="PNG")
    tensor = ImageTransform(ImageConfig(mode="L", resize=8, crop=8))(buffer.getvalue())
    np.testing.assert_allclose(tensor, digit[None] / 255.0, atol=1e-6)


def test_undecodable_and_truncated_images_are_invalid_input() -> None:
    transform = ImageTransform(ImageConfig(resize=32, crop=32))
    with pytest.raises(
        InvalidInput, match=r"could not decode an image from 9 bytes starting with b'not an i'"
    ):
        transform(b"not an im")
    photo = jpeg(load_sample_image("flower.jpg"))
    with pytest.raises(InvalidInput):
        transform(photo[: len(photo) // 3])


def test_images_over_the_pixel_limit_are_refused_before_decoding() -> None:
    transform = ImageTransform(ImageConfig(max_pixels=1000))
    with pytest.raises(PayloadTooLarge, match="image is 640x427 pixels, more than the limit of 1000"):
        transform(jpeg(load_sample_image("flower.jpg")))


def test_image_smaller_than_the_crop_is_refused() -> None:
    with pytest.raises(InvalidInput, match="image is 20x10 pixels, smaller than the 16x16"):
        ImageTransform(ImageConfig(crop=16))(jpeg(np.zeros((10, 20, 3), np.uint8)))


def test_base64_with_and_without_data_url_prefix() -> None:
    assert decode_base64("aGVsbG8=") == b"hello"
    assert decode_base64("data:image/png;base64,aGVsbG8=") == b"hello"
    with pytest.raises(InvalidInput, match="not valid base64"):
        decode_base64("***")
