"""The portal's records of work: exports and their whole state machine (``exports``), curation
edits (``curation``), the export preview, stable pseudonyms.
"""
