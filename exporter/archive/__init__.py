"""Building the ZIP: entry names and parts (``layout``), the per-file transform
(``transform``), the part builder and ``metadata.json`` (``build``), the ZIP writer, source
reading, the residual-identifier check and ``verify``.
"""
