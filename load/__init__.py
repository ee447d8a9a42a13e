"""Stage 1, load: built-in model shapes, the Hugging Face model and its tokenizer."""
