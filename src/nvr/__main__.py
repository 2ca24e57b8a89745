import sys

from nvr.cli import main

sys.exit(main())
