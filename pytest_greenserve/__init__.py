"""pytest-greenserve: which way to serve a small code model costs the least energy, time and hardware."""

__version__ = "0.1.0"
