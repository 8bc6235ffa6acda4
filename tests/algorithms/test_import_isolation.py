import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

# A None entry in sys.modules makes any import of that name raise ImportError.
_SCRIPT = """
import sys
for name in ("ray", "vllm", "deepspeed", "transformers"):
    sys.modules[name] = None
import clinical_rl.algorithms.advantages
import clinical_rl.algorithms.losses
import clinical_rl.algorithms.kl
"""


def test_algorithms_import_without_heavy_dependencies() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
