import sys

from runapi_mcp.cli import main

sys.exit(main())
