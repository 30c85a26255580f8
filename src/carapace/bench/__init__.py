"""The benchmark suite behind ``carapace bench`` (docs/benchmarks.md)."""
