"""``python -m pytest_greenserve`` is the ``greenserve`` command."""

from .cli import main

raise SystemExit(main())
