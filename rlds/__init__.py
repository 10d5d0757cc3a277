"""RLDS episode files: writing, reading, recovery and export. Depends on nothing of ours."""
