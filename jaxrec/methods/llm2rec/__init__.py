"""LLM2Rec: CSFT on users' title sequences, then MNTP and item-level
contrastive learning with bidirectional attention; its mean-pooled item
embeddings (the shared ``encode`` task) feed SASRec / GRU4Rec (the shared
``seqrec`` task). Each of its objectives is one module here."""

from jaxrec.methods.llm2rec import contrastive, csft, mntp

TASKS = (csft.TASK, mntp.TASK, contrastive.TASK)
