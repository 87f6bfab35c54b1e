"""jaxrec: large language models as sequential recommenders, in JAX/Flax."""

from jaxrec.models.lm import LM
from jaxrec.runs import load_lm

__all__ = ["LM", "load_lm"]
__version__ = "0.1.0"
