"""Training objectives as pure functions of arrays.

Each module documents the batch it expects. Losses are means over the global
batch: inside ``jax.jit`` with sharded inputs, XLA inserts the collectives, so
in-batch negatives come from every device.
"""
