"""Session 15 (results/reference/README.md): short-caption slots shards with a chosen distribution of object counts.
usage: make_counts.py OUT N P1 P2 P3 P4   (probabilities of 1..4 objects)"""
import sys

import numpy as np

import ablate.toy.scenes as scenes
from ablate.toy.shards import write_split

orig = scenes.sample_scene
probs = np.array([float(x) for x in sys.argv[3:7]])
probs /= probs.sum()
def drawn(rng, n_objects=None, world=scenes.DEFAULT_WORLD):
    return orig(rng, n_objects or int(rng.choice(4, p=probs)) + 1, world)
scenes.sample_scene = drawn
out, n = sys.argv[1], int(sys.argv[2])
paths = write_split(out, "train", n, seed=0, shard_size=1000, short_fraction=1.0)
print(len(paths), "shards")
