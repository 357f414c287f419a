import sys

from sgdjax.run import main

sys.exit(main())
