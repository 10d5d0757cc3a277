"""One-button end-to-end run on the simulated robot (``continuon pipeline``, ``make demo``).

Each stage runs the project's own commands as subprocesses (``continuon ...``,
``cloud_jobs ...``), exactly as a robot builder would type them, so the pipeline
proves the commands and not a private shortcut around them.
"""
