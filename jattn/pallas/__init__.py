"""Pallas kernels, one module per workload. Imported lazily by the dispatcher."""
