"""Quantized models: ModelOpt's quantization turned into one quantized-linear form that every compiler takes."""
