"""The VLM families run_vlm.py knows, by the model_type of their config."""

from __future__ import annotations

from vlm.eagle2 import Eagle2
from vlm.qwen2_5_vl import Qwen2_5_VL

FAMILIES = {"qwen2_5_vl": Qwen2_5_VL, "eagle2_structure": Eagle2, "eagle_2_5_vl": Eagle2}
