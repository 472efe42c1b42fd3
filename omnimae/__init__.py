"""OmniMAE: one plain ViT pretrained on images and videos by masked autoencoding."""

__version__ = "0.1.0"
