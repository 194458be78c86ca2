import sys

from consumer.entrypoints.cli import main

sys.exit(main())
