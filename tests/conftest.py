import os
import sys
from pathlib import Path

# Tests never reach a model hub, and time on one thread (see README: measuring latency).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).parent))
