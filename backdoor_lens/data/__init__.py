"""Data builders: sentiment lexicons, toy sequences with a poisoned trigger, chat prompts and
instruction backdoors, benign text sources, toxic sentences and natural-language poisoning."""
