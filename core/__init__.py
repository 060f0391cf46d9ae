"""clustkit: a plugin-based toolkit for deep image clustering with contrastive learning.

Importing this package is cheap on purpose (no torch): the CLI's ``--help`` and
``clustkit plugins`` must stay fast even when plugins pull in torch, timm and faiss.
"""

import pluggy

__version__ = "0.1.0"

#: Marker for hook implementations in plugins and components: ``@hookimpl``.
hookimpl = pluggy.HookimplMarker("clustkit")

__all__ = ["hookimpl", "__version__"]
