"""The library version, in a module of its own so that no module inside hf_ext imports the package face."""

__version__ = "0.1.0"
