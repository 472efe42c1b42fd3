"""VideoLoader: a manifest of videos -> reads -> frame windows decoded -> replicated, masked batches."""

from __future__ import annotations

from loaders.assembly import AssemblySettings
from loaders.batch import VIDEO
from loaders.frames import sample_frame_indices
from loaders.item_loader import ItemLoader
from loaders.manifest import Manifest


class VideoLoader(ItemLoader):
    """Videos: `num_frames` frames over a random `window_s` window, short side `short_side`.

    decode_backend: auto, pyav or dali (loaders.decode); codec: the one the backend is chosen for
    (None: guessed from the first entry); the other options: ItemLoader's.
    """

    modality = VIDEO

    def __init__(self, manifest: Manifest, settings: AssemblySettings, *, num_frames: int = 16,
                 window_s: float = 2.7, short_side: int = 256, decode_backend: str = "auto",
                 codec: str | None = None, **options):
        super().__init__(manifest, settings, **options)
        from loaders.decode import make_video_decoder

        self.num_frames = num_frames
        self.window_s = window_s
        self.decoder = make_video_decoder(backend=decode_backend, codec=codec or guess_codec(manifest),
                                          device=self.device, short_side=short_side, num_frames=num_frames,
                                          batch_size=self.items_per_batch, threads=self.decode_threads)

    def _decode(self, items, rng):
        indices = []
        for index, _ in items:
            entry = self.manifest[index]
            indices.append(sample_frame_indices(entry.num_frames, entry.fps, num_frames=self.num_frames,
                                                window_s=self.window_s, rng=rng))
        codecs = [self.manifest[index].codec for index, _ in items]  # None: the decoder reads it
        return self.decoder.decode([data for _, data in items], indices, codecs=codecs)


def guess_codec(manifest: Manifest) -> str:
    """The first entry's codec: the manifest's, else what the container suggests (SSv2's .webm is
    VP9; .mp4 is usually H.264). Only the backend choice starts from it: decoding is per item."""
    if manifest[0].codec:
        return manifest[0].codec
    uri = manifest[0].uri.lower().split("?")[0]
    if uri.endswith(".webm") or uri.endswith(".mkv"):
        return "vp9"
    if uri.endswith((".mp4", ".m4v", ".mov")):
        return "h264"
    if uri.endswith(".avi"):
        return "mjpeg"
    return "unknown"
