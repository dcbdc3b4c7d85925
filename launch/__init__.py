"""The launch side: SageMaker SDK scripts and the same pipeline on one machine (--local)."""
import sys
from pathlib import Path

# The container's package holds what both sides share (hyperparameters, metrics, search space).
CONTAINER = Path(__file__).resolve().parents[1] / "container"
if str(CONTAINER) not in sys.path:
    sys.path.insert(0, str(CONTAINER))
