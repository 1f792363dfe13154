"""Where tokc computes pixels in bfloat16.

Tokens are exact on every machine (the integer prior). Pixels are not: the spec fixes a
tolerance only for the fidelity decoder at realism 0 (FORMAT.md 8.6), and that decode stays in
float32. Two kinds of pixel decodes have no such rule and run under bfloat16 autocast here, where
the hardware computes it natively (about twice as fast as float32, docs/performance.md session
16):

- a decode at realism > 0, whose noise is implementation-defined anyway (the fidelity pass of
  its low band included: 1-2 levels from float32, against grain of tens of levels);
- the encoder's own decodes (previews, block ranking, correction fitting): the file is whatever
  the encoder chose, and a decoder draws it from the tokens.

Both stay deterministic on a machine. Elsewhere (no native bfloat16: the CPU lacks AVX512-BF16
and AMX, or `TOKC_BF16=0`) they run in float32, as before.
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch


@functools.lru_cache(maxsize=None)
def native_bf16(device_type: str) -> bool:
    """Whether bfloat16 convolutions run natively (fast) on this device type."""
    if os.environ.get("TOKC_BF16", "1") == "0":
        return False
    if device_type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device_type == "cpu":
        try:
            return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
        except AttributeError:  # an older torch without the probes: assume not
            return False
    return False


def pixels_bf16(device: torch.device, enabled: bool = True):
    """Autocast to bfloat16 for a pixel decode that needs no bit-exact float32 result, where the
    device computes bfloat16 natively; otherwise nothing changes."""
    if enabled and native_bf16(device.type):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
