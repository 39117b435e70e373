"""kernelfi's version: one definition, importable from every level (the package root re-exports it)."""
__version__ = "0.1.0"
