"""`python -m trainer ...` (and `torchrun ... -m trainer ...`): the trainer's command line."""

from trainer.cli import main

raise SystemExit(main())
