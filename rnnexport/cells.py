"""The seed's cells, where users import them: ``from rnnexport.cells import lstm``.

They live in :mod:`rnnexport.source.cells`.
"""

from rnnexport.source.cells import *  # noqa: F403
from rnnexport.source.cells import __all__  # noqa: F401
