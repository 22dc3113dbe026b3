"""The local OpenAI-compatible API server (`grok-desktop serve`, Settings > API server).

- `protocol`: request parsing and validation, jobs, replies (no HTTP).
- `server`: the HTTP layer, the job queue and the engine thread behind it.
"""
