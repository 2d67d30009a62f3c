import sys

from speedrunner.cli import main

sys.exit(main())
