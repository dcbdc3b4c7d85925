"""The `train` program: everything only it runs (job.py is its entry point)."""
