"""Downloading Grok-2 from the Hugging Face Hub: resumable, verified, planned before it starts,
and optionally prepared (quantized) while it downloads.

hub: the huggingface_hub wrapper (file list, byte ranges, one-line errors); fetch: resumable
verified file download with pause/cancel and progress; budget: the plan, the file order and the
disk check (torch-free); license: the Grok 2 Community License acceptance record; pipeline:
one download start to end. CLI: app/commands/download.py; GUI: app/gui/download_view.py.
"""
