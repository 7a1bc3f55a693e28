"""Benchmarks and drills: each prints what it measured; nothing is asserted here."""
