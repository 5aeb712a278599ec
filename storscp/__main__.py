import sys

from storscp.cli import main

sys.exit(main())
