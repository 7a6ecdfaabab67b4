from __future__ import annotations

from broker.cli import main

raise SystemExit(main())
