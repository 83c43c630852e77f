import sys

from crawler_stub.server import main

sys.exit(main())
