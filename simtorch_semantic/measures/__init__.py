"""Layer x layer similarity measures over a DataLoader (all subclasses of BaseSimilarity)."""

from .base import BaseSimilarity
from .cca import CCA
from .cka import CKA, DeltaCKA
from .collect import CollectingSimilarity
from .layer import LayerSimilarity
from .procrustes import Procrustes
from .rsa import RSA
from .semantic import SemanticCKA

__all__ = ["BaseSimilarity", "CollectingSimilarity", "CKA", "DeltaCKA", "RSA", "Procrustes", "CCA",
           "SemanticCKA", "LayerSimilarity"]
