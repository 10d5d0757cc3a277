"""Network-facing side of the daemon. Talks to the brain only through brain.interface."""
