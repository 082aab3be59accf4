import sys

from observer.cli import main

sys.exit(main())
