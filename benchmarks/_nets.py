"""Models the benchmarks run; they live in the package so that `stoker demo` and `stoker bench`
serve the same networks."""

from stoker._nets import SmallCNN, TinyCNN, build_model

__all__ = ["SmallCNN", "TinyCNN", "build_model"]
