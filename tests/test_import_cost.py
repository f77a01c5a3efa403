"""What importing a stage's flow costs: the heavy libraries a one-model stage never uses stay out.

Importing torchvision imports all of it (detection ops through `torch._dynamo`, datasets, video),
scikit-learn imports SciPy's statistics, and matplotlib its font and colour machinery: seconds of
every stage's start (see README, "Fixed cost of a stage"). The flow imports them where they are
used: torchvision when an ImageNet model is built, scikit-learn when a subset or folds are drawn,
matplotlib when a figure is drawn (in a process of its own), Dask's `distributed` only when a
stage's tasks run on a Dask cluster (one task runs in a thread of the flow's process).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KEPT_OUT = ("torchvision", "torch._dynamo", "sklearn", "scipy.stats", "matplotlib", "distributed")


def test_importing_the_zoo_flow_leaves_the_heavy_libraries_out() -> None:
    probe = (
        "import json, sys\n"
        "import flows.train_zoo\n"
        f"print(json.dumps([name for name in {KEPT_OUT!r} if name in sys.modules]))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
