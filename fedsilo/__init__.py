"""fedsilo: cross-silo federated learning with homomorphic encryption and differential privacy.

The card's top-level folders (crypto, privacy, protocols, silos) live under this one import
package so that ``import fedsilo.crypto`` never collides with unrelated PyPI packages.
"""
from fedsilo.errors import FedsiloError

__version__ = "0.1.0"
__all__ = ["FedsiloError", "__version__"]
