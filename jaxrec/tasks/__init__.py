"""The tasks every method shares (``encode``: item texts to vectors;
``seqrec``: a sequential recommender), the LM-training task around an
objective (:mod:`jaxrec.tasks.lm_training`), the config sections tasks share
(:mod:`jaxrec.tasks.specs`). The methods' own tasks are in
:mod:`jaxrec.methods`; all of them are registered in :mod:`jaxrec.registry`
and run in their run directory by :func:`jaxrec.run_dir.run_task`.
"""
