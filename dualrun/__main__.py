"""``python -m dualrun``: the same as the ``dualrun`` console script."""

from dualrun.cli import main

raise SystemExit(main())
