"""tokc: a learned image codec for ultra-low bitrates.

    data = tokcodec.encode(image, bpp=0.03)   # PIL image, path or image bytes -> .tkc bytes
    image = tokcodec.decode(data, seed=7)      # .tkc bytes -> PIL image

Every failure of the API raises a tokcodec.TokcError (see tokcodec.errors): FormatError,
CodecError, ArgumentError (also ValueError; ArgumentTypeError also TypeError), WeightsError,
ImageError. `import tokcodec.pillow` lets Pillow open and save .tkc files.
"""

from .errors import ArgumentError, ArgumentTypeError, CodecError, FormatError, TokcError

__version__ = "0.4.0"


def encode(image, bpp=0.03, **options) -> bytes:
    """Encode a PIL image, an image path or image bytes to .tkc bytes at or under `bpp`
    (options: nbytes, codebook, mode, quantile, weights, device, max_pixels, correction,
    blocks, tokens, scale, effort; see codec.encode)."""
    from .codec import encode as _encode
    return _encode(image, bpp, **options)


def decode(data: bytes, seed: int = 0, **options):
    """Decode .tkc bytes to a PIL image (options: temperature, realism, weights, device,
    max_pixels; see codec.decode)."""
    from .codec import decode as _decode
    return _decode(data, seed, **options)


def __getattr__(name: str):
    # WeightsError and ImageError also derive from classes of modules that import torch
    if name in ("WeightsError", "ImageError"):
        from . import codec
        return getattr(codec, name)
    raise AttributeError(f"module 'tokcodec' has no attribute {name!r}")


__all__ = ["encode", "decode", "TokcError", "FormatError", "CodecError", "ArgumentError",
           "ArgumentTypeError", "WeightsError", "ImageError", "__version__"]
