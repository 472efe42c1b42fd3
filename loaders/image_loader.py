"""ImageLoader: a manifest of images -> reads -> decoded (on the GPU where there is one) -> batches."""

from __future__ import annotations

from loaders.assembly import AssemblySettings
from loaders.batch import IMAGE
from loaders.item_loader import ItemLoader
from loaders.manifest import Manifest


class ImageLoader(ItemLoader):
    """Images (JPEG and what PIL reads); the options: ItemLoader's."""

    modality = IMAGE

    def __init__(self, manifest: Manifest, settings: AssemblySettings, **options):
        super().__init__(manifest, settings, **options)
        from loaders.decode.image import make_image_decoder

        # On a GPU the fastest JPEG decoder measured there (nvJPEG without a table); CPU elsewhere.
        self.decoder = make_image_decoder(self.device, threads=self.decode_threads)

    def _decode(self, items, rng):
        return self.decoder.decode([data for _, data in items])
