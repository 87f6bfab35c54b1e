"""LLMEmb: SCFT on item attribute prompts (its objective, here), then the
prompts' embeddings (the shared ``encode`` task, ``encode.text: attributes``)
behind a trainable adapter in the recommender, aligned to ID item vectors by
RAT (the shared ``seqrec`` task: ``recommender.items.kind: llm`` with
``recommender.alignment.to``)."""

from jaxrec.methods.llmemb import scft

TASKS = (scft.TASK,)
