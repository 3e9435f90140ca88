"""DICOM headers without the database: the header walk (``header``), VR/VM checks of values
(``values``) and the curated values in force per file (``rules``).
"""
