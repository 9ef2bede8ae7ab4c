"""Quantisers behind one interface (`base.Quantizer`: fit / encode / decode / codebooks / save / load).

Each quantiser is one file of this package defining a `Quantizer` subclass with a `name`; importing the package
imports every public module, which registers every quantiser in `QUANTIZERS` (`name -> class`).
"""

import importlib
import pkgutil

from training.quantizers.base import QUANTIZERS, Quantizer, codebook_sum

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["QUANTIZERS", "Quantizer", "codebook_sum"]
