"""opsbook benchmarks (scripts that measure; not tests). See bench/README.md."""
