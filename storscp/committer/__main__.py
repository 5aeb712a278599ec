import sys

from storscp.committer.main import main

sys.exit(main())
