"""Vision-language models for run_vlm.py: one module per family, and the Protocol every family follows."""
