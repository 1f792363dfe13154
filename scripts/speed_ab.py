"""Fresh-process encode (and decode) times of two source trees, alternating (bench's speed
snippet: model load excluded, default threads), and whether the two trees write the same
bytes. OLD is a checkout of an earlier commit, e.g. `git worktree add /tmp/old 27898b2`.

    python scripts/speed_ab.py /tmp/old/src kodim01,kodim05 0.03,0.01 [runs] [--decode]

With --decode each tree also decodes its own file, and the decoded PNGs are compared.
"""
import filecmp
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from tokcodec.bench import SPEED_SNIPPET

args = [a for a in sys.argv[1:] if a != "--decode"]
decode = "--decode" in sys.argv
trees = {"old": args[0], "new": str(Path(__file__).resolve().parents[1] / "src")}
imgs, targets = args[1].split(","), args[2].split(",")
runs = int(args[3]) if len(args) > 3 else 2
DATA = os.environ.get("KODAK", "../shared/data/kodak")
res: dict = {}


def snippet(src, *argv):
    env = {**{k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}, "PYTHONPATH": src}
    r = subprocess.run([sys.executable, "-c", SPEED_SNIPPET, *argv], capture_output=True, text=True, env=env)
    return json.loads(r.stdout.strip().splitlines()[-1])


for t in targets:
    for n in imgs:
        for run in range(runs):
            order = list(trees.items()) if run % 2 == 0 else list(reversed(trees.items()))
            for name, src in order:
                row = snippet(src, "encode", f"{DATA}/{n}.png", f"/tmp/speed_ab_{name}.tkc", t)
                res.setdefault((t, "encode", name), []).append(row["encode_s"])
                print(t, n, name, "encode %.2f s" % row["encode_s"], row["bytes"], row["setting"],
                      "peak %.0f MB" % row["peak_mb"], flush=True)
            for name, src in order if decode else []:
                row = snippet(src, "decode", f"/tmp/speed_ab_{name}.tkc", f"/tmp/speed_ab_{name}.png")
                res.setdefault((t, "decode", name), []).append(row["decode_s"])
                print(t, n, name, "decode %.2f s" % row["decode_s"], "peak %.0f MB" % row["peak_mb"], flush=True)
            same = filecmp.cmp("/tmp/speed_ab_old.tkc", "/tmp/speed_ab_new.tkc", shallow=False)
            if decode:
                same = same and filecmp.cmp("/tmp/speed_ab_old.png", "/tmp/speed_ab_new.png", shallow=False)
            print(t, n, "same output" if same else "OUTPUT DIFFERS", flush=True)
for (t, job, name), v in sorted(res.items()):
    print(t, job, name, "median %.2f s of %d" % (statistics.median(v), len(v)))
