"""Tasks that ``python -m jaxrec.launch`` runs, by the config's ``task`` value."""

from jaxrec.pipelines import encode

TASKS = {"encode": encode.run}
