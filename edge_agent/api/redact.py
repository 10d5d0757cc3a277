"""Keep the robot's file system layout out of what the API tells a client.

Error messages come from deep inside the brain (updater, trainer, episode
store) and often name the file they were about; a LAN client has no use for
``/var/lib/continuon/ota/slots/A/...`` and an attacker maps the robot with
it.  Every error leaves the API through this filter: an absolute path under a
system directory becomes its last component.
"""

from __future__ import annotations

import re

# First components of real file system paths; API routes (/api/..., /app/...) are left alone.
_ROOTS = (
    "home|root|var|etc|tmp|proc|sys|dev|run|usr|opt|srv|mnt|media|boot|lib|lib64|bin|sbin"
    "|snap|work|data|nix|private|Users|Volumes"
)
_PATH = re.compile(rf"(?<![\w/.~-])/(?:{_ROOTS})(?:/[^\s'\"`,;:()\[\]{{}}<>]*)?")


def _last(match: re.Match[str]) -> str:
    parts = [p for p in match.group(0).split("/") if p]
    return f"…/{parts[-1]}" if len(parts) > 1 else "…"


def redact_paths(text: str) -> str:
    """``text`` with every absolute file system path cut to ``…/<last component>``."""
    return _PATH.sub(_last, text)
