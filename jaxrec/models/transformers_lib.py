"""transformers, imported quietly: jaxrec uses its tokenizers and configs only."""

from __future__ import annotations

import os


def import_transformers():
    # without torch, importing transformers advises that models are unavailable: jaxrec needs none
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    return transformers
