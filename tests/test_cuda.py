"""CPU and CUDA give the same bitstream and the same tokens (issue 15 item 5). Runs only where
CUDA is present; elsewhere it is skipped with the reason."""

import numpy as np
import pytest
import torch

from tiny import photo

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="CUDA is not available on this machine (the check needs a GPU)")


@pytest.fixture(scope="module")
def cuda_codec(tiny_weights):
    from tokcodec.codec import Codec
    return Codec(str(tiny_weights), "cuda")


@pytest.mark.parametrize("nbytes", [120, 400])
def test_same_file_and_tokens_on_cpu_and_cuda(codec, cuda_codec, nbytes):
    img = photo(320, 224, seed=9)
    # the coding of tokens is exact on both; the correction grid is fitted to each device's own
    # pixels, and the default token choice (tokens="rd") to each device's bf16 decoder, so
    # compare the exact part: nearest-codeword tokens, no correction
    cpu = codec.encode(img, nbytes=nbytes, correct=False, tokens="nearest").data
    gpu = cuda_codec.encode(img, nbytes=nbytes, correct=False, tokens="nearest").data
    assert cpu == gpu
    for a, b in ((codec, cuda_codec), (cuda_codec, codec)):
        ta, ka = a.decode_tokens(a.read(cpu))
        tb, kb = b.decode_tokens(b.read(cpu))
        assert np.array_equal(ta, tb) and np.array_equal(ka, kb)
    k = codec.read(cpu).header.codebook
    full_cpu = codec.generate(*codec.decode_tokens(codec.read(cpu)), k, 5, 0.8)
    full_gpu = cuda_codec.generate(*cuda_codec.decode_tokens(cuda_codec.read(cpu)), k, 5, 0.8)
    assert np.array_equal(full_cpu, full_gpu)


def test_a_cuda_file_with_correction_decodes_on_the_cpu(codec, cuda_codec):
    data = cuda_codec.encode(photo(160, 96, seed=3), nbytes=300).data  # rd tokens, correction
    ta, tb = codec.decode_tokens(codec.read(data)), cuda_codec.decode_tokens(cuda_codec.read(data))
    assert all(np.array_equal(x, y) for x, y in zip(ta, tb))
    a = np.asarray(codec.decode(data, realism=0.0)).astype(int)
    b = np.asarray(cuda_codec.decode(data, realism=0.0)).astype(int)
    assert np.abs(a - b).max() <= 2  # pixels are deterministic per machine, not bit-exact across


def test_shipped_weights_give_the_same_file_and_tokens_on_cpu_and_cuda():
    """The shipped model (real sizes: K up to 1024, the full prior), where integer overflow or a
    float shortcut in the exact prior would show first."""
    from conftest import ROOT
    from tokcodec.codec import Codec
    if not (ROOT / "weights" / "tokc.safetensors").is_file():
        pytest.skip("the shipped weights are not in this checkout")
    cpu, gpu = Codec(str(ROOT / "weights"), "cpu"), Codec(str(ROOT / "weights"), "cuda")
    img = photo(384, 256, seed=5)
    for nbytes in (150, 700):
        a = cpu.encode(img, nbytes=nbytes, correct=False, tokens="nearest").data
        b = gpu.encode(img, nbytes=nbytes, correct=False, tokens="nearest").data
        assert a == b
        ta = cpu.decode_tokens(cpu.read(a))
        tb = gpu.decode_tokens(gpu.read(a))
        assert all(np.array_equal(x, y) for x, y in zip(ta, tb))
        k = cpu.read(a).header.codebook
        assert np.array_equal(cpu.generate(*ta, k, 3, 1.0), gpu.generate(*tb, k, 3, 1.0))


def test_files_of_the_base_prior_decode_the_same_on_cpu_and_cuda(tmp_path):
    """Where the shipped weights hold a prior file (weights v5), files naming the base file's
    prior still decode to the same tokens on both devices (the other prior's exact pass)."""
    from conftest import ROOT
    from tokcodec.codec import Codec
    w = ROOT / "weights"
    if not (w / "prior.safetensors").is_file():
        pytest.skip("the shipped weights hold no prior file")
    (tmp_path / "tokc.safetensors").symlink_to(w / "tokc.safetensors")
    old = Codec(str(tmp_path), "cpu").encode(photo(384, 256, seed=7), nbytes=300, correct=False,
                                             tokens="nearest").data
    cpu, gpu = Codec(str(w), "cpu"), Codec(str(w), "cuda")
    assert cpu.read(old).header.model_id != cpu.model.model_id
    ta, tb = cpu.decode_tokens(cpu.read(old)), gpu.decode_tokens(gpu.read(old))
    assert all(np.array_equal(x, y) for x, y in zip(ta, tb))
    k = cpu.read(old).header.codebook
    mid = cpu.read(old).header.model_id
    assert np.array_equal(cpu.for_model(mid).generate(*ta, k, 3, 1.0), gpu.for_model(mid).generate(*tb, k, 3, 1.0))
