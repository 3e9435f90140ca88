"""Who may do what: users, projects and roles (``accounts``), personal API tokens, the audit
log.
"""
