"""ppp_min: a small pure-PyTorch reimplementation of PPP (arXiv 2511.02208) and its UserVille environment."""

__version__ = "0.1.0"
