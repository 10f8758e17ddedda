"""Baseline compressors (HoliTom, FastVID, FlashVID, UniComp, AOT), one module each.

Importing this package imports every module in it, and each module registers its
method with `ottvid.register` under the contract in DESIGN.md.
"""
import importlib
import pkgutil

for _m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")
