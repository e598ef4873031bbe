import sys

from minictr.cli import main

sys.exit(main())
