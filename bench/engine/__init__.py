"""The engine, the only layer that imports JAX: data, devices, training programs, the one
training loop for a unit of any size, timing, costs and calibration."""
