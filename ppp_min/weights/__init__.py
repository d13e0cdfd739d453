"""Weights on disk: Hugging Face directories (safetensors) and llama GGUF files converted to them."""
