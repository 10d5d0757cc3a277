"""Export episodes as a TFDS dataset directory in RLDS layout -- without TensorFlow.

``tfds.builder_from_directory(out_dir).as_dataset(split="train")`` loads the
result with the real ``tensorflow-datasets``; nothing here imports TensorFlow.

What is written (``<name>`` is ``dataset_name``)::

    out_dir/
      dataset_info.json     name, version, and per split: shard lengths, bytes
      features.json         the FeaturesDict, as tfds' ``Feature.to_json`` writes it
      <name>-train.tfrecord-00000-of-00002
      <name>-train.tfrecord-00001-of-00002
      <name>-val.tfrecord-00000-of-00001 ...

Every record is one serialized ``tf.train.Example`` holding one whole EPISODE,
the way tfds serializes a ``FeaturesDict`` with a ``steps: tfds.features.Dataset``
feature: one key per leaf (``steps/observation/image``,
``episode_metadata/robot`` ...), each step's values concatenated in step order.

Features (per step, under ``steps``):

* ``observation/<name>`` -- JPEG observations (``image``) as ``Image`` uint8
  HxWx3 ``jpeg``: the JPEG bytes stored on the robot are copied verbatim, never
  decoded and re-encoded, so the pixels are exactly what decoding the stored
  frame gives.  16-bit PNG observations (``depth``) as ``Image`` uint16 HxWx1
  ``png``: also copied verbatim, and lossless, so depth comes back bit-exact
  (with a trailing channel axis of 1, as tfds images always have).  Other
  (raw) observations as ``Tensor`` of their dtype and shape.
  Image dimensions that differ between episodes are declared ``None``.
* ``action`` float64 [A], ``reward`` float64, ``discount`` float64, ``t`` float64
  (the step's monotonic time), ``timestamps/<sensor>`` float64 for every sensor
  named in some episode's first step (NaN where a step lacks it): float64
  ``Tensor``\\ s with ``encoding="bytes"``, because a ``tf.train.FloatList`` is
  float32 and would round them.  Values are bit-exact.
* ``is_first``, ``is_last``, ``is_terminal`` bool.
* ``extra_json`` (only with ``include_extra=True``): the step's ``extra`` dict as JSON.

Per episode, under ``episode_metadata``: every top-level scalar key of the
*transformed* metadata that all exported episodes share with one type (str ->
Text, bool, int -> int64, float -> float64), always ``truncated`` and
``num_steps``, and ``metadata_json`` -- the whole transformed metadata as JSON
(nested values included).  ``transform_metadata`` (the anonymizer) sees the
episode's metadata with its ``episode_id``, so nothing bypasses it: a key it
drops appears nowhere in the output.

Every episode must have the same observation names, encodings and action size
(a mixed set is refused with a message naming the episode), and every episode
must be in ``splits``.  Splits without episodes are left out of the dataset.

Atomicity and re-runs: the dataset is written into a hidden sibling directory
(``.<out_dir>.tfds-tmp-<random>``) and renamed into place only when complete, so
an interrupted export leaves no partial dataset, and running it again simply
starts over (leftover temporary directories of earlier runs are removed).  An
existing ``out_dir`` is replaced if it is empty or holds a TFDS dataset
(``dataset_info.json``); anything else is refused rather than deleted.  The
output is deterministic: the same episodes, splits and transform give
byte-identical files (nothing time- or machine-dependent is written), so a
manifest of checksums compares equal across re-runs.

The modules, one job each: ``schema`` (the features every episode has, from the
first step of each), ``features`` (``features.json``), ``encode`` (one episode
into one ``tf.train.Example``), ``headers`` (image sizes without decoding),
``files`` (the shards and the final rename) and ``export`` (the whole run).
"""

from __future__ import annotations

from rlds.datasets.tfds.export import DEFAULT_SHARD_MAX_BYTES, TfdsExportStats, export_tfds
from rlds.datasets.tfds.headers import jpeg_shape, png16_shape

__all__ = [
    "DEFAULT_SHARD_MAX_BYTES",
    "TfdsExportStats",
    "export_tfds",
    "jpeg_shape",
    "png16_shape",
]
