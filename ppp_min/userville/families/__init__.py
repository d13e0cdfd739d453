"""Task families: one file each (``base.py`` the interface), registered by name in ``registry.py``."""
