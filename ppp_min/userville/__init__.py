"""UserVille-mini: tasks, the 20 preferences and the simulated user. Knows nothing of torch."""
