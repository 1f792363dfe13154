"""Finding, loading and identifying the model weights (one safetensors file).

The file holds the tokenizer (fp16, prefix `tok.`) and the quantised prior (integers, prefix
`prior.`); its metadata holds both configs (JSON) and the training provenance.
The model id is the first 4 bytes of SHA-256 over the tensors (name, dtype, shape, bytes, in
name order), so editing the provenance text does not change it.

Search order: explicit path (--weights), $TOKC_WEIGHTS, the copy inside the installed
package (wheels), the repository's weights/ folder (source checkouts, editable installs).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .prior import ExactPrior, PriorConfig
from .tokenizer import Tokenizer, TokenizerConfig

FILENAME = "tokc.safetensors"


class WeightsError(RuntimeError):
    pass


def candidates(explicit: str | os.PathLike | None = None) -> list[Path]:
    out = []
    if explicit:
        out.append(Path(explicit))
    if os.environ.get("TOKC_WEIGHTS"):
        out.append(Path(os.environ["TOKC_WEIGHTS"]))
    here = Path(__file__).resolve().parent
    out += [here / "weights", here.parents[1] / "weights"]
    return out


def find(explicit: str | os.PathLike | None = None) -> Path:
    for c in candidates(explicit):
        f = c / FILENAME if c.is_dir() else c
        if f.is_file():
            return f
        if explicit and c == Path(explicit):
            raise WeightsError(f"no weights at {c} (expected a {FILENAME} file or a folder holding one)")
    raise WeightsError("no model weights found; reinstall tokc or point --weights / TOKC_WEIGHTS "
                       f"at a folder with {FILENAME}")


def model_id(tensors: dict[str, torch.Tensor]) -> bytes:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.digest()[:4]


@dataclass
class Model:
    tokenizer: Tokenizer
    prior: ExactPrior
    model_id: bytes
    path: Path
    metadata: dict

    @property
    def codebooks(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.tokenizer.cfg.codebooks) & set(self.prior.cfg.codebooks)))


def load(path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> Model:
    f = find(path)
    try:
        with safe_open(str(f), framework="pt") as sf:
            meta = sf.metadata() or {}
            tensors = {k: sf.get_tensor(k) for k in sf.keys()}
        tok_cfg = TokenizerConfig.from_dict(json.loads(meta["tokenizer_config"]))
        pri_cfg = PriorConfig.from_dict(json.loads(meta["prior_config"]))
    except (OSError, KeyError, ValueError, json.JSONDecodeError) as e:
        raise WeightsError(f"cannot read weights {f}: {e}") from None
    tok = Tokenizer(tok_cfg)
    tok.load_state_dict({k[4:]: v.float() for k, v in tensors.items() if k.startswith("tok.")})
    tok.eval().to(device)
    prior = ExactPrior(pri_cfg, {k[6:]: v for k, v in tensors.items() if k.startswith("prior.")}, device)
    return Model(tok, prior, model_id(tensors), f, meta)


def save(path: str | os.PathLike, tokenizer: Tokenizer, prior_tensors: dict[str, torch.Tensor],
         prior_cfg: PriorConfig, provenance: dict) -> bytes:
    """Write the shipped file: tokenizer in fp16, prior integers as they are. Returns the model id."""
    tensors = {f"tok.{k}": v.detach().cpu().half().contiguous() for k, v in tokenizer.state_dict().items()}
    small = {}
    for k, v in prior_tensors.items():
        lo, hi = int(v.min()), int(v.max())
        dtype = torch.int16 if -32768 <= lo and hi <= 32767 else torch.int32
        small[f"prior.{k}"] = v.to(dtype).contiguous()
    tensors.update(small)
    meta = {"tokenizer_config": json.dumps(tokenizer.cfg.to_dict()),
            "prior_config": json.dumps(prior_cfg.to_dict()),
            "provenance": json.dumps(provenance)}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)
    return model_id(tensors)
