"""`python -m gateway.demo [train | serve]`: see `gateway.demo.launcher`."""

import sys

from gateway.demo.launcher import main

sys.exit(main())
