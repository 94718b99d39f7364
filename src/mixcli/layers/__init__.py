"""Shared Paddle building blocks: norms, rotary embeddings, attention with a KV cache, decoder stacks."""
