"""Signed A/B over-the-air model updates: trust (TUF), slots, install, health window, rollback.

See docs/ota.md.  Submodules are imported where they are needed; this package
imports nothing heavy so that the CLI can read the state file cheaply.
"""
