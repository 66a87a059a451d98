import sys

from scssl.cli import main

sys.exit(main())
