"""Names shared by the CLI, recipes, guidance and data code; torch-free, so ``mcfast --help`` stays fast."""
from __future__ import annotations

MODALITIES = ("ct", "mg")                    # CT (HU) and mammography ([0, 1])
BACKENDS = ("auto", "reference", "fused")    # ILVRGuidance backends: [sampler] backend, --backend
COMPANDINGS = ("linear", "ct_asinh")         # the space a run diffuses in: diffusion.companding, --companding
