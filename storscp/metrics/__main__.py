import sys

from storscp.metrics.main import main

sys.exit(main())
