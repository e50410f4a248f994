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
"""

__version__ = "0.1.0"
