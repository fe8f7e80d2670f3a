"""leanstack: LeanKV, ChipExpert, Ursa, Sinan and Seer on two shared substrates."""

__version__ = "0.1.0"
