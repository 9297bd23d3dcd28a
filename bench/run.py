"""`make bench`: run every benchmark under bench/ in turn; each writes its section of RESULTS.md."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

BENCHMARKS = ("feature_speed.py", "soft_targets.py", "decode_speed.py", "kd_speed.py", "gmm_speed.py", "deploy_speed.py", "synth_speed.py", "decode_beams.py",
              "soft_target_storage.py", "graph_build.py", "rescore.py", "bf16_cpu.py", "loader_speed.py",
              "graph_push.py")

if __name__ == "__main__":
    here = Path(__file__).parent
    for name in BENCHMARKS:
        print(f"== {name}", flush=True)
        sys.argv = [str(here / name)]
        runpy.run_path(str(here / name), run_name="__main__")
