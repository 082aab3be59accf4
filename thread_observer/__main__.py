import sys

from thread_observer.cli import main

sys.exit(main())
