"""Backend-facing names: :class:`ModelOption` (and ``Backend`` for Mellea-style imports)."""

from mellea_actors.backends.model_options import ModelOption
from mellea_actors.core.backend import Backend, BaseModelSubclass

__all__ = ["Backend", "BaseModelSubclass", "ModelOption"]
