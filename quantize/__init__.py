"""Float bundle -> quantized bundle with a measured fidelity report (`moss-edge quantize`)."""
