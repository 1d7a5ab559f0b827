"""Galaxy-cluster fields (the BLISS case study): simulate DES-like g, r, i, z fields,
train a tile encoder, stream inference over survey-size images, score it.

Modules, in the order data flows: ``config`` (YAML), ``prior`` (catalogs),
``render`` (JAX renderer), ``dataset`` (shards and tile labels), ``encoder``
(Equinox network, checkpoints), ``train`` (optax), ``infer`` (streaming
inference, ``infer_file``), ``metrics`` and ``evaluate`` (scores and baseline),
``cli`` (``psfax clusters``).  See docs/clusters.md.
"""
