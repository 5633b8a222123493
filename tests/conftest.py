import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")
torch.set_num_threads(min(2, torch.get_num_threads()))

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
OFFICIAL = SHARED / "reference" / "official"


@pytest.fixture
def official_dir() -> Path:
    if not (OFFICIAL / "official_architectures.json").is_file():
        pytest.skip("reference checkpoints (../shared/reference/official) are not available here")
    return OFFICIAL
