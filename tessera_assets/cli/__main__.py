import sys

from tessera_assets.cli import main

sys.exit(main())
