#!/bin/bash
# One call on a lent GPU (device tool): train several candidate priors side by side on the one
# GPU, run the CPU/CUDA bitstream check (scripts/cuda_check.sh) meanwhile, and time a CUDA
# encode and decode. Everything that comes back is under $OUT (at most 8 files):
#   train.log   every training process's output, each line prefixed by its variant's name
#   check.log   tests/test_cuda.py and the CUDA timings
#   NAME.pt     each variant's final weights (model, config, step; no optimiser state)
# Needs, carried: runs/tokens.npz (python -m tokcodec.train tokens --ckpt weights/tokc.safetensors
# --data ../shared/data/train --out runs/tokens.npz), .whl/ (constriction's wheel), and
# optionally runs/kodak/*.png for the timings.
# Usage: scripts/gpu_priors.sh MINUTES   (variants: the VARIANTS table below)
set -u
MIN=${1:-7}
DEV=${DEV:-cuda}; TOKENS=${TOKENS:-runs/tokens.npz}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" runs/gpu
if [ -d .whl ] && ! python3 -c "import constriction" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 DEV
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$OUT/check.log" 2>&1

# name | options (shape, start, learning rate)
VARIANTS=(
  "d6warm|--depth 6 --init weights/tokc.safetensors --lr 6e-4"
  "d4warm|--depth 4 --init weights/tokc.safetensors --lr 8e-4"
  "d3warm|--depth 3 --init weights/tokc.safetensors --lr 8e-4"
  "d4new|--depth 4 --lr 2e-3"
)
pids=()
for v in "${VARIANTS[@]}"; do
    name=${v%%|*}; opts=${v#*|}
    ( python3 -m tokcodec.train prior --tokens "$TOKENS" --out "runs/gpu/$name" --tied \
        --minutes "$MIN" --batch 512 --save-minutes 1.5 --log-every 30 --val-batches 32 --device "$DEV" $opts 2>&1 \
        | sed -u "s/^/$name /" >> "$OUT/train.log" ) &
    pids+=($!)
done

{ echo "== tests/test_cuda.py"; timeout 240 sh scripts/cuda_check.sh 2>&1 | tail -15
  echo "== CUDA timings (Kodak images, 0.03 bpp, default effort; model loaded once)"
  timeout 200 python3 - <<'EOF' 2>&1
import glob, time
import torch
from PIL import Image
from tokcodec.codec import get_codec
sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
for dev in (__import__("os").environ.get("DEV", "cuda"),):
    c = get_codec(None, dev)
    for f in sorted(glob.glob("runs/kodak/*.png")):
        img = Image.open(f).convert("RGB")
        t = time.perf_counter(); data = c.encode(img, bpp=0.03).data; sync(); te = time.perf_counter() - t
        t = time.perf_counter(); c.decode(data, 1); sync(); td = time.perf_counter() - t
        t = time.perf_counter(); c.decode(data, 1); sync(); td2 = time.perf_counter() - t
        print(f"{dev} {f}: {len(data)} B, encode {te:.2f} s, decode {td:.2f} s, again {td2:.2f} s", flush=True)
EOF
} >> "$OUT/check.log" 2>&1

wait "${pids[@]}"
for v in "${VARIANTS[@]}"; do
    name=${v%%|*}
    python3 - "$name" <<'EOF' >> "$OUT/check.log" 2>&1
import sys, torch
n = sys.argv[1]
ck = torch.load(f"runs/gpu/{n}/last.pt", map_location="cpu", weights_only=False)
ck.pop("opt", None)
torch.save(ck, f"{__import__('os').environ['OUT']}/{n}.pt")
print("saved", n, ck["step"])
EOF
done
