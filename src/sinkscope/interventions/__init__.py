"""What to change: small frozen interventions that compose, applied only inside a sweep or ``applied``."""

from .ablate import AblateDims, AblateNeurons
from .amplify import Amplify
from .base import Intervention, applied, compose
from .isolate import Isolate
from .massive import ResetMassive

__all__ = ["AblateDims", "AblateNeurons", "Amplify", "Intervention", "Isolate", "ResetMassive", "applied", "compose"]
