"""The data path: manifests, the asynchronous reader pool, decoding and batch assembly.

`loaders` knows nothing of the model or the trainer; it may import `omnimae.masking` only.
"""
