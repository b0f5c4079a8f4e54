"""Experiment configs: one file per benchmark; each docstring holds its command."""
