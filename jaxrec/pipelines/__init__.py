"""Tasks that ``python -m jaxrec.launch`` runs, by the config's ``task`` value."""

from jaxrec.pipelines import encode, llmsrec, seqrec, train_objective

TASKS = {
    "encode": encode.run,
    "csft": train_objective.run,
    "mntp": train_objective.run,
    "contrastive": train_objective.run,
    "scft": train_objective.run,
    "seqrec": seqrec.run,
    "llmsrec": llmsrec.run,
}
