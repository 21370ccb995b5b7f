"""The performance harness: `synth bench` (see benchmarks/harness.py)."""
