"""Official evaluation protocols of published benchmarks, reproduced exactly (one module per benchmark)."""
