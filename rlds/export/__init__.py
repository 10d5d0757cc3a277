"""Exports of recorded episodes: TFDS RLDS datasets and LeRobot v3 datasets."""
