"""Per-project personalization (watcher, corpus, LoRA job, gate, adapter registry).

Not built yet: see the project's open issues. Nothing here is imported by the server.
"""
