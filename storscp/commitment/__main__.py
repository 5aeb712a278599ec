import sys

from storscp.commitment.main import main

sys.exit(main())
