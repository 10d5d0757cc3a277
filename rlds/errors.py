"""The one exception type of the episode library.

Callers (the daemon's recorder, the CLI, export jobs) need to tell "this episode
file is unusable / this call is wrong" apart from programming errors, and show
the message to a person.  So every problem the library detects is raised as
``EpisodeError`` with a message that names the file and, for corrupt data, the
record index and byte offset.
"""

from __future__ import annotations


class EpisodeError(Exception):
    """Misuse of the API, or an episode on disk that is missing, malformed or corrupt."""
