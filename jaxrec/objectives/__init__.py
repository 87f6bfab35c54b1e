"""Loss math on arrays that several objectives share: token-level
cross-entropies and similarity losses. No configs, data or models here; each
objective's own module (in its method's package, :mod:`jaxrec.methods`) holds
its spec, examples, collation and the binding of these losses to a model.

Losses are means over the global batch: inside ``jax.jit`` with sharded
inputs, XLA inserts the collectives, so in-batch negatives come from every
device.
"""
