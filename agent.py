"""Real-time voice agent worker: console | dev | start | connect | simulate.

Run `python agent.py --help`. The code lives in the `agent/` package.
"""

import sys

from agent.cli import main

if __name__ == "__main__":
    sys.exit(main())
