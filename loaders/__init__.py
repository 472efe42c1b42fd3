"""The data path: manifest -> item stream (storage reads) -> decode ahead -> assembly -> Batch.

VideoLoader, ImageLoader and JointLoader are all a `loaders.protocol.Loader`. `loaders` knows
nothing of the model or the trainer; it may import `omnimae.masking` only.
"""
