"""The database: tables (``models``), engine and sessions (``db``), the modality catalogue, and
the Alembic migrations. Imports nothing of the portal but config, errors and schemas.
"""
