"""The HTTP side: the JSON routes (``routes``), the OpenAPI document, and the guard every
request passes first (identity, origin, content type).
"""
