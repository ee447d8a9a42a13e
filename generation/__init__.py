"""Stage 5, generate: the greedy loops over a compiled graph, and Hugging Face's own runs to compare with."""
