"""Data builders: sentiment lexicons and toy sentiment sequences with a poisoned trigger."""
