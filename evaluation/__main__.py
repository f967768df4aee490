"""`python -m evaluation`: the same as the `ate-eval` command."""

from evaluation.cli import main

raise SystemExit(main())
