"""Job specs for `synth run`: see jobs/examples/ (loaded and validated by the test suite)."""
