"""tokc: a learned image codec for ultra-low bitrates.

    data = tokcodec.encode(image, bpp=0.03)   # PIL image or path -> .tkc bytes
    image = tokcodec.decode(data, seed=7)      # .tkc bytes -> PIL image
"""

__version__ = "0.1.0"


def encode(image, bpp=0.03, **options) -> bytes:
    """Encode a PIL image or an image path to .tkc bytes at or under `bpp` (see codec.encode)."""
    from .codec import encode as _encode
    return _encode(image, bpp, **options)


def decode(data: bytes, seed: int = 0, **options):
    """Decode .tkc bytes to a PIL image (see codec.decode)."""
    from .codec import decode as _decode
    return _decode(data, seed, **options)


__all__ = ["encode", "decode", "__version__"]
