"""Stub of xprof for tokamax on machines without xprof (see benchmarks/README.md)."""
