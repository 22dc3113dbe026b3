"""Conversations in and out of the app: export (md/json/html/txt/pdf), import (our JSON,
ChatGPT's export), and the Markdown pieces the exporters share with the GUI (`markup`).

No torch; only `pdf_export` uses Qt (its PDF writer), imported on demand.
"""
