"""The methods, one package each: its config classes, objectives and tasks
(``TASKS``), registered with one line in :mod:`jaxrec.registry`. The tasks
every method shares (``encode``, ``seqrec``) and the LM-training task around an
objective are in :mod:`jaxrec.tasks`."""
