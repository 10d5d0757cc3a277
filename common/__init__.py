"""Small mechanisms every package shares, at the bottom of the dependency graph.

One module each for durable file writes, back-off and host health (DESIGN.md): brain, rlds,
edge_agent and cloud_jobs import them; they import nothing of ours, so no feature package
owns them and none has to be loaded to reach them.
"""
