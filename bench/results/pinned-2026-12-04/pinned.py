"""Summarise the pinned-layout sets: per scenario, B2 and B3 medians, the
median of the per-run B2/B3 ratios, and how busy each core was in B2 and B3
(postern alone on CPU 1; client, target sshd and cat on CPU 0).
  python3 pinned.py pin*.log"""
import re, statistics as st, sys
from collections import defaultdict
for f in sys.argv[1:]:
    runs = defaultdict(dict)
    for l in open(f):
        m = re.search(r"bench: (\w+) (B\d) run (\d+): ([\d.]+)s (\d+) MiB/s cpu (\{.*\})", l)
        if m:
            runs[(m[1], m[2])][int(m[3])] = (float(m[4]), int(m[5]), eval(m[6]))
    for s in ("output", "gate"):
        b2, b3 = runs.get((s, "B2")), runs.get((s, "B3"))
        if not b2 or not b3:
            continue
        med = lambda d: st.median(v[1] for v in d.values())
        paired = st.median(b2[r][1] / b3[r][1] for r in b2 if r in b3)
        def busy(d, who):
            return [ (v[2].get("postern", 0) if who == 1 else v[2]["target"] + v[2]["client"]) / v[0] for v in d.values()]
        rng = lambda xs: f"{100*min(xs):.0f}-{100*max(xs):.0f}%"
        print(f"{f} {s}: B2 {med(b2):.0f} B3 {med(b3):.0f} MiB/s, {med(b2)/med(b3):.2f}x of medians, "
              f"{paired:.2f}x paired; CPU 1 (postern) busy B2 {rng(busy(b2,1))} B3 {rng(busy(b3,1))}; "
              f"CPU 0 (client+target) busy B2 {rng(busy(b2,0))} B3 {rng(busy(b3,0))}; "
              f"B3 runs {sorted(v[1] for v in b3.values())}")
