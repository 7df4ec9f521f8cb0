"""Dialogs: convert/export, LoRA, conversion jobs, rules, analyze, importance matrix, optimize,
preferences (memory budget) and About."""
