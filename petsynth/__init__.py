"""petsynth: synthesize quantitative PET (SUV) from CT, MRI or low-dose PET.

Subpackages
-----------
data       DICOM/NIfTI reading, SUV, pairing, dataset store, phantom simulator
physics    HU -> mu at 511 keV, attenuation maps, projection and Poisson count noise
nn         networks only
diffusion  noise processes and samplers (pure maths, no networks)
methods    one module per method, and the registry
train      one training loop for every method, checkpoints
metrics    image metrics and SUV metrics
io         writers: NIfTI, DICOM, PNG
inference  running a trained model over many slices (translate, evaluate, bench)

petsynth.translate(model, input, out, ...): CT (DICOM or NIfTI) or dataset split -> synthetic PET in SUV.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    """``petsynth.translate(...)``: :func:`petsynth.translation.translate`, imported on first use (so that
    ``import petsynth`` stays light)."""
    if name == "translate":
        from petsynth.translation import translate

        return translate
    raise AttributeError(f"module 'petsynth' has no attribute {name!r}")
