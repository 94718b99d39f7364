"""`mix serve`: an OpenAI-compatible HTTP server for one model, with a request queue and batched decoding."""
