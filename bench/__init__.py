"""culm benchmarks: ``python -m bench --help``."""
