"""The benchmark: our agent against a bare agent of the same SDK (see bench/README.md)."""
