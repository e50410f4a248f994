"""Networks only (2D, (B, C, H, W)); no training logic. Thin wrappers of MONAI networks with typed configs.

- :mod:`~petsynth.nn.autoencoder`: VQ autoencoder (VQGAN-style, EMA codebook) for the latent methods.
- :mod:`~petsynth.nn.denoiser`: diffusion U-Net with timestep embedding, named presets.
- :mod:`~petsynth.nn.conditioning`: CPDM's map encoder (attention / attenuation maps to the latent grid).
- :mod:`~petsynth.nn.segmenter`: attention-map segmenter (U-Net with a ResNet encoder).
- :mod:`~petsynth.nn.discriminator`: PatchGAN discriminator (70x70 patches).
- :mod:`~petsynth.nn.resnet_generator`: CycleGAN's ResNet generator (``resnet_9blocks``).
- :mod:`~petsynth.nn.cross_attention`: uPETe's CT-guided cross-attention (windowed, 2D and 3D).
"""

from petsynth.nn.autoencoder import AUTOENCODER_PRESETS, VQAutoencoder, VQAutoencoderConfig, build_autoencoder
from petsynth.nn.conditioning import MapEncoder
from petsynth.nn.cross_attention import CTGuidedCrossAttention
from petsynth.nn.denoiser import DENOISER_PRESETS, DenoiserConfig, build_denoiser, count_parameters
from petsynth.nn.discriminator import DiscriminatorConfig, PatchGAN, build_discriminator, receptive_field
from petsynth.nn.resnet_generator import ResnetGenerator, ResnetGeneratorConfig
from petsynth.nn.segmenter import SegmenterConfig, attention_map, binarize, build_segmenter, probability

__all__ = [
    "AUTOENCODER_PRESETS",
    "CTGuidedCrossAttention",
    "DENOISER_PRESETS",
    "DenoiserConfig",
    "DiscriminatorConfig",
    "MapEncoder",
    "PatchGAN",
    "ResnetGenerator",
    "ResnetGeneratorConfig",
    "SegmenterConfig",
    "VQAutoencoder",
    "VQAutoencoderConfig",
    "attention_map",
    "binarize",
    "build_autoencoder",
    "build_denoiser",
    "build_discriminator",
    "build_segmenter",
    "count_parameters",
    "probability",
    "receptive_field",
]
