"""The steps of `trainer pack`, one module each, numbered in the method's order (paper section
4.3): the premise check, the generalist teacher, its pruned and distilled generalists, the
baselines, the partition of the classes, the subset teachers M_I, the experts m_I, the report.
Each module's `run(ctx)` reads what earlier steps wrote to the work folder and writes its own
record there; a finished step returns its record at once."""
