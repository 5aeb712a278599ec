import sys

from storscp.logger.main import main

sys.exit(main())
