"""Sequential recommenders over item representations (ID or frozen-LLM based)."""
