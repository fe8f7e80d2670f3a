"""ChipICD-Bench (ours): IC-design questions with executable checkers, a runner and a report.

Items live in ``items/*.jsonl`` (one file per domain); ``items.py`` loads and validates them,
``checkers.py`` scores answers, ``runner.py`` asks a model, ``report.py`` prints tables and charts.
"""
