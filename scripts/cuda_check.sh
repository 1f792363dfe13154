#!/bin/sh
# CPU and CUDA give the same files and tokens: tests/test_cuda.py (the tiny test model and the
# shipped weights) on a machine with a GPU. Run from the repository root. Where Python lacks
# tokc's dependencies (e.g. a lent GPU machine, which has torch but not constriction), put
# their wheels in .whl/ first; they are installed into /tmp/site and used from there.
# Session 8 ran it on a lent H200 (torch 2.11 + CUDA 13, numpy 2.5): 4 passed. Session 15, with
# weights v5 (prior file) and the float64 exact prior: 5 passed on a lent H200.
set -e
if [ -d .whl ] && ! python3 -c "import constriction" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
export PYTHONPATH="$PWD/src:$PYTHONPATH"
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device here'; print(torch.cuda.get_device_name())"
exec python3 -m pytest -q -rs -p no:cacheprovider tests/test_cuda.py "$@"
