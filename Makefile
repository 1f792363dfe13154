# tokc: common tasks. `make demo` sets everything up and runs the main job; `make test` runs the tests.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= ../shared/data/train
KODAK ?= ../shared/data/kodak
PRIOR_MINUTES ?= 110
IMG ?= $(shell $(BIN)/python -c "import matplotlib.cbook as c; print(c.get_sample_data('grace_hopper.jpg', asfileobj=False))" 2>/dev/null)

.PHONY: setup demo test check-cuda bench bench-speed vvc eval eval-modes eval-realism train-tokenizer train-ladder train-prior tokens-packed train-prior1 export-prior1 train-realism export export-realism train-decoder export-decoder fit-quality clean

# CPU PyTorch: `pip install torch==2.13.0` installs whatever build of 2.13.0 pip finds first. On
# the development machine that is torch-2.13.0+cpu, a wheel in pip's local find-links folder
# (/opt/wheels, set by PIP_FIND_LINKS). Elsewhere PyPI would give the CUDA build (about 5.5 GB);
# take the CPU one from PyTorch's index with
#   make setup TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
TORCH_PIP_ARGS ?=

$(BIN)/tokc: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0 $(TORCH_PIP_ARGS)
	$(BIN)/pip install -q -e ".[test,demo]"
	touch $@

setup: $(BIN)/tokc

demo: setup
	mkdir -p out
	$(BIN)/tokc encode "$(IMG)" out/demo.tkc --bpp 0.03 -v
	$(BIN)/tokc info out/demo.tkc
	$(BIN)/tokc decode out/demo.tkc out/demo.png
	@echo "decoded image: out/demo.png"

test: setup
	$(BIN)/python -m pytest

# CPU and CUDA give the same files and tokens (skipped without CUDA; on a lent GPU: `make check-cuda`)
check-cuda: setup
	$(BIN)/python -m pytest -q -rs tests/test_cuda.py

eval: setup
	mkdir -p out
	$(BIN)/python -m tokcodec.evaluate --data $(KODAK) --sections tokenizer,prior --markdown out/eval.md

eval-modes: setup
	$(BIN)/pip install -q -e ".[bench]"
	mkdir -p out
	$(BIN)/python -m tokcodec.evaluate --data $(KODAK) --sections modes,edge --targets 0.005,0.01,0.02,0.03 \
		--ssimulacra2 --json out/eval-modes.json --markdown out/eval-modes.md --figure docs/edge-vs-checkerboard.png

# VVC for the benchmark (VVenC/VVdeC sources in ../shared/third_party); tokc never needs it
vvc: .cache/vvc/bin/vvencapp
.cache/vvc/bin/vvencapp:
	bash ../shared/tools/build-vvc.sh .cache/vvc

# the speed section alone (tokc against VVenC/VVdeC in the same run): docs/speed.md, about 5 minutes
bench-speed: setup
	$(BIN)/pip install -q -e ".[bench]"
	$(MAKE) vvc
	$(BIN)/python -m tokcodec.bench --data $(KODAK) --speed-only --out docs

bench: setup
	$(BIN)/pip install -q -e ".[bench]"
	$(MAKE) vvc
	$(BIN)/python -m tokcodec.bench --data $(KODAK) --realism 0,0.6,1 --codecs VVC,AVIF
	$(BIN)/python -m tokcodec.bench_grey --data $(KODAK) --targets 0.01,0.03 --out docs
	$(BIN)/python -m tokcodec.bench --data $(DATA) --split holdout --targets 0.01,0.03 --realism 0,0.6,1 \
		--codecs VVC,AVIF --no-speed --out docs/holdout

eval-realism: setup
	$(BIN)/pip install -q -e ".[bench]"
	mkdir -p out
	$(BIN)/python -m tokcodec.evaluate --data $(KODAK) --sections realism --targets 0.01,0.02,0.03 \
		--realism 0,0.5,1 --ssimulacra2 --json out/eval-realism.json --markdown out/eval-realism.md

train-tokenizer: setup
	cd src && ../$(BIN)/python -m tokcodec.train tokenizer --data ../$(DATA) --out ../runs/tok --resume

train-ladder: setup
	cd src && ../$(BIN)/python -m tokcodec.train ladder --ckpt ../runs/tok/last.pt --data ../$(DATA) --out ../runs/tok

train-prior: setup
	cd src && ../$(BIN)/python -m tokcodec.train tokens --ckpt ../runs/tok/ladder.pt --data ../$(DATA) --out ../runs/tokens.pt
	cd src && ../$(BIN)/python -m tokcodec.train prior --tokens ../runs/tokens.pt --out ../runs/prior \
		--tokenizer ../runs/tok/ladder.pt --minutes $(PRIOR_MINUTES) --resume

# prior 1 (weights/prior.safetensors, extends the shipped base file): token grids of the
# training photos from the shipped tokenizer (packed, 13 MB: it travels to a lent GPU), then a
# shallower prior warm-started from the shipped one's first blocks. `scripts/gpu_priors.sh`
# trains this and other candidates side by side on a lent GPU (weights/README.md, version 5).
PRIOR1_DEPTH ?= 3
PRIOR1_MINUTES ?= 7
tokens-packed: setup
	$(BIN)/python -m tokcodec.train tokens --ckpt weights/tokc.safetensors --data $(DATA) --out runs/tokens.npz

train-prior1: setup
	$(BIN)/python -m tokcodec.train prior --tokens runs/tokens.npz --out runs/prior1 --tied --depth $(PRIOR1_DEPTH) \
		--init weights/tokc.safetensors --lr 8e-4 --batch 512 --minutes $(PRIOR1_MINUTES) --val-batches 32

export-prior1: setup
	$(BIN)/python -m tokcodec.train export-prior --prior runs/prior1/last.pt --out weights/prior.safetensors

# fidelity decoder: the decoder trained further on every codebook (encoder, codebooks, prior
# frozen; files name the decoder they were encoded against). DECODER_DATA: a folder of
# same-size crops (scripts/decoder_crops.py makes them); 8 minutes on a GPU, hours on a CPU.
DECODER_DATA ?= runs/decoder-crops
DECODER_MINUTES ?= 8
train-decoder: setup
	$(BIN)/python -m tokcodec.train decoder --data $(DECODER_DATA)/train --val $(DECODER_DATA)/val \
		--out runs/decoder --minutes $(DECODER_MINUTES) --batch 64 --crop 240

export-decoder: setup
	$(BIN)/python -m tokcodec.train export-decoder --ckpt runs/decoder/fidelity.safetensors \
		--out weights/fidelity.safetensors --number 1

fit-quality: setup
	$(BIN)/python -m tokcodec.train quality --data $(DATA)

# realism decoder: adversarial fine-tuning of the shipped decoder (resumes runs/realism/last.pt,
# or starts from the committed training state in train-state/)
REALISM_MINUTES ?= 85
train-realism: setup
	$(BIN)/python -m tokcodec.train realism --data $(DATA) --out runs/realism --minutes $(REALISM_MINUTES) \
		--threads 1 $(if $(wildcard runs/realism/last.pt),--resume,--init-state train-state/realism.safetensors)

export-realism: setup
	$(BIN)/python -m tokcodec.train realism-export --ckpt runs/realism/last.pt --out weights \
		--state train-state/realism.safetensors

export: setup
	cd src && ../$(BIN)/python -m tokcodec.train export --tokenizer ../runs/tok/ladder.pt --prior ../runs/prior/last.pt --out ../weights/tokc.safetensors

clean:
	rm -rf out build dist .pytest_cache
