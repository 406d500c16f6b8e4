"""tokamax imports this at load; jattn's benchmarks never profile through it."""

get_kernel_stats_tool = None
