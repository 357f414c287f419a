"""Throughput benchmarks of sgdjax against a faithful PyTorch reference of the original study.

``python -m benchmarks`` runs them (``--quick`` for a tiny size, ``--only mlp-stage4`` to filter,
``--json out.json`` to save the results); torch comes from the ``bench`` extra.
"""
