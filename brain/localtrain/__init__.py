"""On-robot LoRA fine-tuning (``docs/local-training.md``).

Torch stays out of the daemon: :mod:`brain.localtrain.manager` (the ``TrainerInterface``
the daemon uses), :mod:`.guard`, :mod:`.gate`, :mod:`.job`, :mod:`.data` and
:mod:`.promote` are torch-free; only :mod:`brain.localtrain.worker`, run as a nice'd
subprocess (``python -m brain.localtrain.worker``), and the :mod:`.trainer` and
:mod:`.candidate` it runs import torch and peft.
"""
