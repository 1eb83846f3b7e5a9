"""Provider actors: one module per LLM backend, each call gated through the manager."""
