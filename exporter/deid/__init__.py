"""Privacy below the archive: the PS3.15 profile and its table (``profile``), de-identifying a
dataset (``dataset``) or raw header bytes (``header_bytes``), scrubbing non-DICOM files
(``scrub``) and the per-project keys (``keys``).
"""
