"""Edge bundles: the signed unit of model delivery (DESIGN.md, "Bundles and OTA").

A bundle is a flat tar of ``edge_manifest.json`` plus model files, nothing executable and no
pickle.  ``manifest`` holds the schema, ``pack`` builds bundles (cloud side), ``unpack`` stages
and verifies them on the robot.  Nothing here imports torch or onnxruntime, so the daemon and
the OTA CLI can use it cheaply.
"""

from brain.bundle.manifest import MANIFEST_NAME, SIGNATURE_NAME, BundleError, EdgeManifest

__all__ = ["MANIFEST_NAME", "SIGNATURE_NAME", "BundleError", "EdgeManifest"]
