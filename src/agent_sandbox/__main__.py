"""``python -m agent_sandbox``: the same as the ``agent-sandbox`` command."""

import sys

from agent_sandbox.cli import main

sys.exit(main())
