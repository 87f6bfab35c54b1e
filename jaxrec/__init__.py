"""jaxrec: large language models as sequential recommenders, in JAX/Flax."""

__all__ = ["LM", "Recommender", "load_lm"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # Imported on first use, so `python -m jaxrec.<module>` does not import
    # that module twice (runpy warns when the package already imported it).
    if name == "LM":
        from jaxrec.models.lm import LM

        return LM
    if name == "Recommender":
        from jaxrec.recommend import Recommender

        return Recommender
    if name == "load_lm":
        from jaxrec.runs import load_lm

        return load_lm
    raise AttributeError(f"module 'jaxrec' has no attribute {name!r}")
