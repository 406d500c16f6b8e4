"""Small reference models built on jattn (used by the demo, the tests and the notebooks)."""
