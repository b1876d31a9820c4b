import sys

from splitfc.cli import main

sys.exit(main())
