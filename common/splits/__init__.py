"""Split points by model family: each module registers its family's `SplitSpec` s.

Every module here is imported (sorted by name: the order of
`splitfc.common.specs.SPLITS`); a new family is one module here plus its model
module ``common/models/<family>.py``; a new split of an existing family is one
``register_split`` call in its module. These modules hold plain data: importing
them imports no model code.
"""

from __future__ import annotations

import importlib
import pkgutil

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    importlib.import_module(f"{__name__}.{_info.name}")
