"""Opening one image file: its size is read from the header (PIL opens lazily) and an image above
the pixel cap is refused before a byte of it is decoded. A 160 KB PNG of 13000x13000 pixels
decodes to half a gigabyte, and the dataset's decode runs one per core."""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import Iterator

from PIL import Image

from sweeper.errors import DataError, quoted

MAX_PIXELS_ENV = "SWEEPER_MAX_PIXELS"
DEFAULT_MAX_PIXELS = 64_000_000  # 8000x8000; a camera's largest photos are below it


class TooLarge(DataError):
    """An image above the pixel cap."""


def max_pixels() -> int:
    try:
        return int(os.environ.get(MAX_PIXELS_ENV, DEFAULT_MAX_PIXELS))
    except ValueError:
        raise DataError(f"{MAX_PIXELS_ENV}={quoted(os.environ[MAX_PIXELS_ENV])} is not a whole number of "
                        "pixels") from None


@contextlib.contextmanager
def open_image(path: str) -> Iterator[Image.Image]:
    """The image, opened (header read, nothing decoded) and within the pixel cap, else TooLarge."""
    cap = max_pixels()
    try:
        with warnings.catch_warnings():  # PIL's warning above its limit: the cap below decides
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            handle = Image.open(path)
    except Image.DecompressionBombError:  # PIL's own limit, twice its MAX_IMAGE_PIXELS
        raise TooLarge(f"image {path} has more than {Image.MAX_IMAGE_PIXELS * 2:,} pixels, above "
                       f"the cap of {cap:,} ({MAX_PIXELS_ENV}); downscale it or remove it") from None
    with handle as im:
        if im.width * im.height > cap:
            raise TooLarge(f"image {path} is {im.width}x{im.height} = {im.width * im.height:,} pixels, "
                           f"above the cap of {cap:,} ({MAX_PIXELS_ENV}); downscale it or remove it")
        yield im
