"""The platform domain: roles and capabilities, script rules, API tokens (models live in picloud/models.py)."""
