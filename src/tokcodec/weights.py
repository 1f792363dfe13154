"""Finding, loading and identifying the model weights.

`tokc.safetensors` (the base file) holds the tokenizer (fp16, prefix `tok.`) and the quantised
prior (integers, prefix `prior.`); its metadata holds both configs (JSON) and the training
provenance. An optional `decoder.safetensors` beside it holds a newer pixel decoder (prefix
`dec.`, e.g. the realism-conditioned one) that replaces the base file's decoder, and an
optional `fidelity.safetensors` a newer fidelity decoder (prefix `fid.`, numbered; files of
format 1.3 name the fidelity decoder they were encoded against). An optional
`prior.safetensors` holds a newer prior (integers, prefix `prior.`, its own config): new files
name it by its own model id, and files naming the base file's ids decode with the base prior.

The model id names what defines the bitstream and the meaning of its tokens: the prior's
tensors and the codebooks (SHA-256 over name, dtype, shape and bytes, in name order; see
spec/FORMAT.md section 6). Encoder and decoder are not part of it, so shipping a better
decoder never orphans a file. Files written before this definition (format 1.0 writers up to
weights v2) carry the hash of every tensor of the base file; that id stays accepted as
`legacy_id` while the base file is unchanged.

Search order: explicit path (--weights), $TOKC_WEIGHTS, the copy inside the installed
package (wheels), the repository's weights/ folder (source checkouts, editable installs).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .prior import ExactPrior, PriorConfig
from .tokenizer import Decoder, Tokenizer, TokenizerConfig

FILENAME = "tokc.safetensors"
DECODER_FILENAME = "decoder.safetensors"
FIDELITY_FILENAME = "fidelity.safetensors"
FIDELITY_PREFIX = "fid."
PRIOR_FILENAME = "prior.safetensors"
# what reading a damaged or foreign weights file raises
READ_ERRORS = (OSError, KeyError, TypeError, ValueError, json.JSONDecodeError, SafetensorError)


class WeightsError(RuntimeError):
    pass


def candidates(explicit: str | os.PathLike | None = None) -> list[tuple[Path, str | None]]:
    """Places to look, in order, each with the name of the setting that asked for it
    (--weights, TOKC_WEIGHTS) or None for the default places."""
    out: list[tuple[Path, str | None]] = []
    if explicit:
        out.append((Path(explicit), "--weights"))
    if os.environ.get("TOKC_WEIGHTS"):
        out.append((Path(os.environ["TOKC_WEIGHTS"]), "TOKC_WEIGHTS"))
    here = Path(__file__).resolve().parent
    out += [(here / "weights", None), (here.parents[1] / "weights", None)]
    return out


def find(explicit: str | os.PathLike | None = None) -> Path:
    """The weights file to load. A place the user named (--weights, or TOKC_WEIGHTS when
    --weights is not given) must hold weights: it is an error, not a fallback, if it does not."""
    for c, asked_by in candidates(explicit):
        f = c / FILENAME if c.is_dir() else c
        if f.is_file():
            return f
        if asked_by:
            raise WeightsError(f"no weights at {c} (from {asked_by}; expected a {FILENAME} file "
                               "or a folder holding one)")
    raise WeightsError("no model weights found; reinstall tokc or point --weights / TOKC_WEIGHTS "
                       f"at a folder with {FILENAME}")


def bitstream_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors that define the bitstream: the prior and the codebooks."""
    return {k: v for k, v in tensors.items()
            if k.startswith("prior.") or k.startswith("tok.codebook_")}


def model_id(tensors: dict[str, torch.Tensor]) -> bytes:
    """First 4 bytes of SHA-256 over `name|dtype|shape|` + raw bytes of each tensor, sorted by name."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.digest()[:4]


@dataclass
class Model:
    """The loaded weights. `prior` and `model_id` are what the encoder uses: the newest prior
    (a `prior.safetensors` beside the base file, else the base file's own) and its bitstream id.
    `priors` maps every id a file may carry to the prior that decodes it: the base file's
    bitstream and legacy ids to its own prior, a prior file's id to that prior."""
    tokenizer: Tokenizer
    prior: ExactPrior
    model_id: bytes
    path: Path
    metadata: dict
    legacy_id: bytes = b""
    decoder_path: Path | None = None
    decoder_metadata: dict | None = None
    fidelity_path: Path | None = None
    base_id: bytes = b""  # the base file's bitstream id (what decoder files are made for)
    prior_path: Path | None = None
    prior_metadata: dict | None = None  # the prior file's (its provenance)
    # an earlier prior may be given as a function that builds it: it is built on first use
    priors: dict[bytes, "ExactPrior | Callable[[], ExactPrior]"] = field(default_factory=dict)

    def __post_init__(self):
        self.base_id = self.base_id or self.model_id
        self.priors = {self.legacy_id: self.prior, **self.priors, self.model_id: self.prior} if self.legacy_id \
            else {**self.priors, self.model_id: self.prior}

    def prior_for(self, file_id: bytes) -> ExactPrior:
        """The prior that coded a file with this model id (KeyError: not one of these weights)."""
        p = self.priors[file_id]
        if not isinstance(p, ExactPrior):  # built once, for every id that names it
            built = p()
            self.priors = {i: built if q is p else q for i, q in self.priors.items()}
            p = built
        return p

    @property
    def fidelity(self) -> int:
        """Number of the newest fidelity decoder these weights hold (0: the base file's own);
        the encoder writes it into every file (header field `decoder`, format 1.3)."""
        return max(self.tokenizer.fidelity_decoders)

    def accepts(self, file_id: bytes) -> bool:
        """True when a file with this model id decodes with these weights."""
        return file_id in self.priors

    @property
    def realism(self) -> bool:
        return self.tokenizer.decoder.conditioned

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
    except READ_ERRORS as e:
        raise WeightsError(f"cannot read weights {f}: {e}") from None
    mid = model_id(bitstream_tensors(tensors))
    tok_state = {k[4:]: v.float() for k, v in tensors.items() if k.startswith("tok.")}
    dec_file, dec_meta = f.parent / DECODER_FILENAME, None
    if dec_file.is_file():
        try:
            with safe_open(str(dec_file), framework="pt") as sf:
                dec_meta = sf.metadata() or {}
                dec_state = {k[4:]: sf.get_tensor(k).float() for k in sf.keys() if k.startswith("dec.")}
            made_for = dec_meta["model_id"]
            tok_cfg = TokenizerConfig.from_dict({**tok_cfg.to_dict(), **json.loads(dec_meta["decoder_config"])})
        except READ_ERRORS as e:
            raise WeightsError(f"cannot read decoder weights {dec_file}: {e}") from None
        if made_for != mid.hex():
            raise WeightsError(f"decoder weights {dec_file} were trained for model {made_for}, but "
                               f"{f.name} is model {mid.hex()}; install matching files")
        if dec_meta.get("base_decoder") not in (None, fidelity_decoder_id(tensors)):
            raise WeightsError(f"decoder weights {dec_file} extend a different fidelity decoder than "
                               f"the one in {f.name}; install matching files")
        tok_state.update({f"decoder.{k}": v for k, v in dec_state.items()})
    else:
        dec_file = None
    tok = Tokenizer(tok_cfg)
    try:
        tok.load_state_dict(tok_state)
    except RuntimeError as e:
        raise WeightsError(f"weights {f} do not fit the tokenizer: {str(e).splitlines()[0]}") from None
    fid_file = f.parent / FIDELITY_FILENAME
    if fid_file.is_file():
        number, decoder = load_fidelity(fid_file, TokenizerConfig.from_dict({**tok_cfg.to_dict(), "realism_dim": 0}),
                                        mid, f.name)
        tok.add_fidelity_decoder(number, decoder)
    else:
        fid_file = None
    tok.eval().to(device)
    base_tensors = {k[6:]: v for k, v in tensors.items() if k.startswith("prior.")}
    legacy = model_id(tensors)
    prior_file = f.parent / PRIOR_FILENAME
    if not prior_file.is_file():
        return Model(tok, ExactPrior(pri_cfg, base_tensors, device), mid, f, meta, legacy_id=legacy,
                     decoder_path=dec_file, decoder_metadata=dec_meta, fidelity_path=fid_file)
    new_cfg, new_tensors, new_meta = read_prior(prior_file, mid, f.name)
    new_id = prior_file_id({f"prior.{k}": v for k, v in new_tensors.items()}, tensors)
    try:
        newest = ExactPrior(new_cfg, new_tensors, device)
    except (KeyError, RuntimeError, ValueError) as e:
        raise WeightsError(f"prior weights {prior_file} do not fit their config: {e}") from None
    if set(new_cfg.codebooks) != set(pri_cfg.codebooks):
        raise WeightsError(f"prior weights {prior_file} cover codebooks {list(new_cfg.codebooks)}, "
                           f"the base file {list(pri_cfg.codebooks)}; install matching files")
    return Model(tok, newest, new_id, f, meta, legacy_id=legacy, decoder_path=dec_file,
                 decoder_metadata=dec_meta, fidelity_path=fid_file, base_id=mid, prior_path=prior_file,
                 prior_metadata=new_meta, priors=dict.fromkeys((legacy, mid), functools.partial(ExactPrior, pri_cfg, base_tensors, device)))


def prior_file_id(prior_tensors: dict[str, torch.Tensor], base: dict[str, torch.Tensor]) -> bytes:
    """The bitstream id of a prior file (its `prior.` tensors as stored) over the base file
    with these tensors: the id the base file would have if it held this prior (spec section 6)."""
    return model_id(bitstream_tensors({**{k: v for k, v in base.items() if not k.startswith("prior.")},
                                       **prior_tensors}))


def read_prior(path: Path, base: bytes, base_name: str) -> tuple[PriorConfig, dict[str, torch.Tensor], dict]:
    """A newer prior (integers, prefix `prior.`; metadata: `prior_config` and `model_id`, the
    base file's bitstream id, whose codebooks it codes) and its metadata. Files name it by its
    own bitstream id (`prior_file_id`)."""
    try:
        with safe_open(str(path), framework="pt") as sf:
            meta = sf.metadata() or {}
            tensors = {k[6:]: sf.get_tensor(k) for k in sf.keys() if k.startswith("prior.")}
        cfg, made_for = PriorConfig.from_dict(json.loads(meta["prior_config"])), meta["model_id"]
    except READ_ERRORS as e:
        raise WeightsError(f"cannot read prior weights {path}: {e}") from None
    if made_for != base.hex():
        raise WeightsError(f"prior weights {path} were made for model {made_for}, but {base_name} "
                           f"is model {base.hex()}; install matching files")
    return cfg, tensors, meta


def save_prior(path: str | os.PathLike, prior_tensors: dict[str, torch.Tensor], cfg: PriorConfig,
               base: dict[str, torch.Tensor], provenance: dict) -> bytes:
    """Write a prior file (see read_prior) for the base file with these tensors (as stored).
    Returns the new bitstream id."""
    tensors = {f"prior.{k}": _smallest_int(v) for k, v in prior_tensors.items()}
    meta = {"prior_config": json.dumps(cfg.to_dict()), "model_id": model_id(bitstream_tensors(base)).hex(),
            "provenance": json.dumps(provenance)}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)
    return prior_file_id(tensors, base)


def _smallest_int(v: torch.Tensor) -> torch.Tensor:
    """int16 where the values fit, else int32 (the dtype is part of the model id)."""
    lo, hi = int(v.min()), int(v.max())
    return v.to(torch.int16 if -32768 <= lo and hi <= 32767 else torch.int32).contiguous()



def load_fidelity(path: Path, cfg: TokenizerConfig, mid: bytes, base_name: str) -> tuple[int, torch.nn.Module]:
    """A newer fidelity decoder (fp16, prefix `fid.`; metadata: its number >= 1 and the model id
    it was trained for). Files name the fidelity decoder they were encoded with (spec 8.4)."""
    try:
        meta, state = read_fidelity(path)
        number, made_for = int(meta["number"]), meta["model_id"]
    except READ_ERRORS as e:
        raise WeightsError(f"cannot read fidelity decoder weights {path}: {e}") from None
    if made_for != mid.hex():
        raise WeightsError(f"fidelity decoder weights {path} were trained for model {made_for}, but "
                           f"{base_name} is model {mid.hex()}; install matching files")
    if not 1 <= number <= 255:
        raise WeightsError(f"fidelity decoder weights {path} have number {number}, outside 1..255")
    decoder = Decoder(cfg)
    try:
        decoder.load_state_dict(state)
    except RuntimeError as e:
        raise WeightsError(f"fidelity decoder weights {path} do not fit the tokenizer: "
                           f"{str(e).splitlines()[0]}") from None
    return number, decoder


def read_fidelity(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """A fidelity decoder file's metadata and its decoder state (float32, prefix removed); also
    reads the files `train decoder` writes."""
    with safe_open(str(path), framework="pt") as sf:
        return (sf.metadata() or {}), {k[len(FIDELITY_PREFIX):]: sf.get_tensor(k).float() for k in sf.keys()
                                       if k.startswith(FIDELITY_PREFIX)}


def fidelity_tensors(decoder: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A decoder's state as a fidelity decoder file stores it: fp16, prefix `fid.`."""
    return {FIDELITY_PREFIX + k: v.detach().cpu().half().contiguous() for k, v in decoder.state_dict().items()}


def save_fidelity(path: str | os.PathLike, decoder: torch.nn.Module, number: int, model: bytes,
                  provenance: dict) -> None:
    """Write a fidelity decoder file (see load_fidelity)."""
    tensors = fidelity_tensors(decoder)
    meta = {"number": str(number), "model_id": model.hex(), "provenance": json.dumps(provenance)}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)


def fidelity_decoder_id(tensors: dict[str, torch.Tensor]) -> str:
    """Hex id of the fidelity decoder in a base file's tensors (what a realism decoder extends)."""
    return model_id({k: v for k, v in tensors.items() if k.startswith("tok.decoder.")}).hex()


def save_decoder(path: str | os.PathLike, decoder: torch.nn.Module, cfg: TokenizerConfig,
                 model: bytes, base_decoder: str, provenance: dict) -> None:
    """Write the realism parts of a decoder (fp16, prefix `dec.`: weight deltas, FiLM, noise
    scales, realism embedding) for the model with bitstream id `model`. The fidelity weights
    they extend stay in the base file; `base_decoder` names them (hash of its decoder tensors)."""
    base = set(decoder.base_names())
    tensors = {f"dec.{k}": v.detach().cpu().half().contiguous() for k, v in decoder.state_dict().items()
               if k not in base}
    meta = {"model_id": model.hex(), "decoder_config": json.dumps({"realism_dim": cfg.realism_dim}),
            "base_decoder": base_decoder, "provenance": json.dumps(provenance)}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)


def save(path: str | os.PathLike, tokenizer: Tokenizer, prior_tensors: dict[str, torch.Tensor],
         prior_cfg: PriorConfig, provenance: dict) -> bytes:
    """Write the shipped file: tokenizer in fp16, prior integers as they are. Returns the model id."""
    tensors = {f"tok.{k}": v.detach().cpu().half().contiguous() for k, v in tokenizer.state_dict().items()}
    tensors.update({f"prior.{k}": _smallest_int(v) for k, v in prior_tensors.items()})
    meta = {"tokenizer_config": json.dumps(tokenizer.cfg.to_dict()),
            "prior_config": json.dumps(prior_cfg.to_dict()),
            "provenance": json.dumps(provenance)}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)
    return model_id(bitstream_tensors(tensors))
