"""Fresh-process encode times of two source trees, alternating (bench's speed snippet: model
load excluded, default threads). OLD is a checkout of an earlier commit, e.g.
`git worktree add /tmp/old 27898b2`.

    python scripts/speed_ab.py /tmp/old/src kodim01,kodim05 0.03,0.01 [runs]
"""
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from tokcodec.bench import SPEED_SNIPPET

trees = {"old": sys.argv[1], "new": str(Path(__file__).resolve().parents[1] / "src")}
imgs, targets = sys.argv[2].split(","), sys.argv[3].split(",")
runs = int(sys.argv[4]) if len(sys.argv) > 4 else 2
DATA = os.environ.get("KODAK", "../shared/data/kodak")
res: dict = {}
for t in targets:
    for n in imgs:
        for run in range(runs):
            order = list(trees.items()) if run % 2 == 0 else list(reversed(trees.items()))
            for name, src in order:
                env = {**{k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}, "PYTHONPATH": src}
                r = subprocess.run([sys.executable, "-c", SPEED_SNIPPET, "encode", f"{DATA}/{n}.png",
                                    f"/tmp/speed_ab_{name}.tkc", t], capture_output=True, text=True, env=env)
                row = json.loads(r.stdout.strip().splitlines()[-1])
                res.setdefault((t, name), []).append(row["encode_s"])
                print(t, n, name, "%.2f s" % row["encode_s"], row["bytes"], row["setting"],
                      "peak %.0f MB" % row["peak_mb"], flush=True)
for (t, name), v in sorted(res.items()):
    print(t, name, "median %.2f s of %d" % (statistics.median(v), len(v)))
