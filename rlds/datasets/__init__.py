"""Datasets made from recorded episodes: TFDS (RLDS) and LeRobot v3 exports, on the robot.

Not to be confused with ``cloud_jobs.export``, which converts a trained model to
ONNX / LiteRT / Core ML.  ``run`` is one export run (validate, split, anonymise,
write a format, manifest); ``tfds`` and ``lerobot`` are the two formats.
"""
