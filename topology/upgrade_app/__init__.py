"""The rolling-upgrade drill's Django app: handlers that record each
execution, and the producer that writes events through the Python API.

The drill copies this package beside the previous release as
``upgrade_drill`` (installed with PICLOUD_EXTRA_APPS), so nodes and
producers of both releases import the same handlers; it uses only APIs
both releases have.
"""
