"""The concurrency layer: the slot engine and the ConcurrencyManager actor."""
