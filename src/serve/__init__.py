"""Serving a checkpoint: batched decoding (engine.py, batch.py), text in and out (text.py), and an
OpenAI-compatible HTTP API with a web page (app.py, api.py; those need the `[serve]` extra)."""
