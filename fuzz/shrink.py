#!/usr/bin/env python3
"""Shrink fuzz/corpus/TARGET to at most LIMIT files (default 200).

Run after `cargo +nightly fuzz cmin TARGET`, from fuzz/. libFuzzer's merge
reports which coverage edges each input reaches; this keeps every
hand-written seed (`seed-*`), then greedily the input that adds the most
edges not yet covered, until LIMIT or until nothing adds any. It prints how
many of the corpus's edges the kept files still reach.

    python3 shrink.py gate 200
"""
import os
import shutil
import subprocess
import sys
import tempfile

target = sys.argv[1]
limit = int(sys.argv[2]) if len(sys.argv) > 2 else 200
corpus = os.path.join("corpus", target)
binary = os.path.join("target", "x86_64-unknown-linux-gnu", "release", target)

with tempfile.TemporaryDirectory() as tmp:
    control = os.path.join(tmp, "control")
    empty = os.path.join(tmp, "empty")
    os.mkdir(empty)
    subprocess.run(
        [binary, "-merge=1", "-use_counters=0", "-rss_limit_mb=2048",
         f"-merge_control_file={control}", empty, corpus],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    lines = open(control).read().split("\n")
    n = int(lines[0])
    files = lines[2:2 + n]
    cov = {}
    for line in lines[2 + n:]:
        parts = line.split()
        if parts and parts[0] == "COV":
            cov[int(parts[1])] = set(map(int, parts[2:]))
    edges = set().union(*cov.values()) if cov else set()
    chosen = [i for i, f in enumerate(files) if os.path.basename(f).startswith("seed-")]
    have = set().union(*(cov.get(i, set()) for i in chosen))
    rest = [i for i in cov if i not in chosen]
    while len(chosen) < limit and rest:
        best = max(rest, key=lambda i: (len(cov[i] - have), -os.path.getsize(files[i])))
        if not cov[best] - have:
            break
        chosen.append(best)
        have |= cov[best]
        rest.remove(best)
    keep = os.path.join(tmp, "keep")
    os.mkdir(keep)
    for i in chosen:
        shutil.copy(files[i], keep)
    shutil.rmtree(corpus)
    shutil.copytree(keep, corpus)
    size = sum(os.path.getsize(os.path.join(corpus, f)) for f in os.listdir(corpus))
    print(f"{corpus}: {len(chosen)} files, {size} bytes, {len(have)}/{len(edges)} edges")
