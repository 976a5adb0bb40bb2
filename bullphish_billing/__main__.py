import sys

from bullphish_billing.cli import main

sys.exit(main())
