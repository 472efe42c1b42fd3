"""The two kinds of input, named once: the keys of the data sets, the model's token counts and both
config trees. Torch-free, so that omnimae.config stays light (omnimae.model re-exports it)."""

MODALITIES = ("image", "video")
