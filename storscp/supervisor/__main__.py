import sys

from storscp.supervisor.listener import main

sys.exit(main())
