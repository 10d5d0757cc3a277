"""The Robot API: REST + WebSocket for the companion app, behind pairing and owner tokens."""
