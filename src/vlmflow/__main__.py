import sys

from vlmflow.cli import main

sys.exit(main())
