"""Benchmark-only adapters: the same neuron faults through PyTorchFI, MRFI and kernelfi.

Not part of the kernelfi package: the peers are installed by hand for the benchmark
(``bench/README.md``). ``common`` imports neither peer, so the fault pairing can be used
without them.
"""
