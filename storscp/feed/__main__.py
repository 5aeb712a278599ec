"""The feed process: replays the history of the stored-instance feed."""

import sys

from storscp.feed.main import main

sys.exit(main())
