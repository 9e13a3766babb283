"""Session 15 (results/reference/README.md): the positive control (``conditioning_check.py``)
with the single object drawn at the size objects have in the slots world's shared scenes
(38-44 % of the side instead of 50-62 %), still at the centre: one factor, the object's size.
Arguments as ``research/toy_diagnostics/conditioning_check.py``'s."""
import runpy
import sys
from pathlib import Path

import ablate.toy.scenes as scenes

scenes.SLOT_SIDES["alone"] = dict(scenes.SLOT_SIDES["shared"])
root = Path(__file__).resolve().parents[3]
sys.argv[0] = str(root / "research" / "toy_diagnostics" / "conditioning_check.py")
runpy.run_path(sys.argv[0], run_name="__main__")
