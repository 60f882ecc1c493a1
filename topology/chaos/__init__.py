"""The chaos run: every event source under node kills, lost sessions and
database restarts, ending with a ledger of what ran (docs/reliability.md).

Installed as a Django app (PICLOUD_EXTRA_APPS) in the processes under test,
so that its ``handlers`` module registers the handlers the run's scripts name.
"""
