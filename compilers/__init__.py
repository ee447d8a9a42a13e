"""Stage 4, compile: the lowered graph through TensorRT, inductor or as it is, and the runtime wrappers around it."""
