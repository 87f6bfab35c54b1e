"""LLM-SRec: a frozen decoder made sequence-aware by distilling a trained
SASRec's user vectors through small heads and added tokens. The teacher is the
shared ``seqrec`` task; the distillation is this package's ``llmsrec`` task."""

from jaxrec.methods.llmsrec import task

TASKS = (task.TASK,)
