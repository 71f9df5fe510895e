import sys

from stylejax.align.stage import main

sys.exit(main())
