"""Fault models (docs/method.md §2): bit-flip models, sites per mode, the memory map, and how a fault
changes what a kernel computes (per-thread replay, the SGEMM's effects: ``gemm`` (the table), ``gemm_thread``
(the struck thread's geometry and re-sums), ``gemm_view`` (operand access); RF register roles)."""
