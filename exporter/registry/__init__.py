"""What is stored: walking a directory (``scan``), registering files, patients and tags
(``ingest``), and selection to files, counts and estimates (``query``).
"""
