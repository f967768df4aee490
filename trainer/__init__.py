"""Trainer: turns a labelled image data set into a model pack (paper section 4.3)."""
