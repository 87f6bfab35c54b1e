"""LLM-SRec: a frozen decoder made sequence-aware by distilling a trained
SASRec's user vectors through small heads and added tokens."""
