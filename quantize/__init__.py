"""Quantized models: ModelOpt's quantization turned into one quantized-linear form that every compiler takes."""

INSTALL_MODELOPT = "pip install -r requirements-quant.txt (nvidia-modelopt 0.47.0 and requests)"
