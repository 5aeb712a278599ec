import sys

from storscp.receiver.main import main

sys.exit(main())
