"""The plugin backend: attention as the TensorRT Edge-LLM AttentionPlugin op, its model swap, converter and compile."""
