"""kernelfi: kernel-level soft-error fault injection for CNNs on GPUs.

See ``docs/method.md`` (method) and ``docs/`` (design).
"""
__version__ = "0.1.0"
