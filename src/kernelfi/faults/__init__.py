"""Fault models (docs/method.md §2): bit-flip models, sites per mode, the memory map, and how a fault
changes what a kernel computes (per-thread replay, tiled-SGEMM effects, RF register roles)."""
