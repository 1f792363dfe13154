"""Pillow plugin for .tkc files, registered on import (as pillow-heif / pillow-jxl-plugin do):

    import tokcodec.pillow                      # or tokcodec.pillow.register(seed=7)
    from PIL import Image
    im = Image.open("photo.tkc")                # decodes on first access to the pixels
    im.save("small.tkc", bpp=0.02)              # or bytes=900; codebook, mode, quantile too

Decoding options (seed, temperature, realism, max_pixels, weights, device) have defaults that
`register(**options)` or `set_options(**options)` change for every file opened later; one
image's options can be changed before its pixels are read: `im.decode_options["seed"] = 3`.
Weights come from `weights=`, else TOKC_WEIGHTS, else the shipped ones. Every failure raises
a tokcodec.TokcError: Image.open raises FormatError for a damaged file (checked without the
model), im.load() and im.save() raise what tokcodec.decode and tokcodec.encode raise.
"""

from __future__ import annotations

from PIL import Image, ImageFile

from . import container, errors

FORMAT = "TKC"
EXTENSION = ".tkc"
MIME = "image/x-tkc"
DEFAULT_BPP = 0.03

_DEFAULTS = {"seed": 0, "temperature": 0.0, "realism": None,
             "max_pixels": container.DEFAULT_MAX_PIXELS, "weights": None, "device": "auto"}
options: dict = dict(_DEFAULTS)  # current decoding defaults; change them with set_options


def _checked(opts: dict) -> dict:
    unknown = sorted(set(opts) - set(_DEFAULTS))
    if unknown:
        raise errors.ArgumentError(f"unknown option(s) {', '.join(unknown)}; known: {', '.join(_DEFAULTS)}")
    out = dict(opts)
    if "seed" in out:
        out["seed"] = errors.check_seed(out["seed"])
    if "temperature" in out:
        out["temperature"] = errors.check_temperature(out["temperature"])
    if out.get("realism") is not None:
        out["realism"] = errors.check_realism(out["realism"])
    if "max_pixels" in out:
        out["max_pixels"] = errors.check_max_pixels(out["max_pixels"])
    return out


def set_options(**opts) -> dict:
    """Change the decoding defaults for .tkc files opened from now on; returns them all."""
    options.update(_checked(opts))
    return dict(options)


def _accept(prefix: bytes) -> bool:
    return container.looks_like_tkc(prefix)


class TkcImageFile(ImageFile.ImageFile):
    format = FORMAT
    format_description = "tokc learned image codec"

    def _open(self) -> None:
        assert self.fp is not None
        self._tkc = self.fp.read()
        self.decode_options = dict(options)
        c = container.unpack(self._tkc, self.decode_options["max_pixels"])  # FormatError if damaged
        hd = c.header
        self._size = container.shown_size(hd)
        self._mode = "RGB"
        self.info.update({"tkc_codebook": hd.codebook, "tkc_mask_mode": hd.mode,
                          "tkc_model_id": hd.model_id.hex(), "tkc_version": f"{container.MAJOR}.{hd.minor}"})
        self.tile = []

    def load(self):
        if self._im is None and getattr(self, "_tkc", None) is not None:
            from .codec import decode
            opts = _checked(self.decode_options)
            img = decode(self._tkc, opts["seed"], temperature=opts["temperature"], realism=opts["realism"],
                         weights=opts["weights"], device=opts["device"], max_pixels=opts["max_pixels"])
            self.im = img.im
            self._tkc = None
            if self._exclusive_fp and self.fp:
                self.fp.close()
            self.fp = None
        return super().load()


def _save(im: Image.Image, fp, filename) -> None:
    """im.save(..., bpp=B | bytes=N, codebook=K, mode=M, quantile=Q, effort=E, weights=...,
    device=..., max_pixels=...): the whole file at or under the target (default 0.03 bpp)."""
    from .codec import encode
    from .imageio import _to_rgb
    info = dict(im.encoderinfo)
    nbytes = info.get("bytes")
    bpp = info.get("bpp", None if nbytes is not None else DEFAULT_BPP)
    data = encode(_to_rgb(im), bpp, nbytes=nbytes, codebook=info.get("codebook"), mode=info.get("mode"),
                  quantile=info.get("quantile"), effort=info.get("effort", "full"), weights=info.get("weights"),
                  device=info.get("device", "auto"),
                  max_pixels=info.get("max_pixels", container.DEFAULT_MAX_PIXELS))
    fp.write(data)


def register(**opts) -> None:
    """Register the .tkc format with Pillow (open, save, extension, MIME type); `opts` set
    the decoding defaults as set_options does. Calling it again only changes the defaults."""
    if opts:
        set_options(**opts)
    Image.register_open(FORMAT, TkcImageFile, _accept)
    Image.register_save(FORMAT, _save)
    Image.register_extension(FORMAT, EXTENSION)
    Image.register_mime(FORMAT, MIME)


register()
