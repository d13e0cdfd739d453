"""The language model: its config, the decoder and its CPU fast paths, the presets, the tokenizer, the sampler.
Knows nothing of UserVille or RL."""
