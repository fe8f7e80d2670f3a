"""Sinan: bandit data collection, a CNN latency predictor plus a boosted-tree violation
predictor, and a 1 s control loop that picks the cheapest allocation both call safe.

Entry points: ``leanstack sinan collect|train|explain`` (:mod:`.cli`) and
``--controller sinan`` in ``leanstack micro run`` (:class:`.controller.SinanController`).
"""
