"""Entry point of ``python -m finetune.tools``."""
import sys

from finetune.tools import main

sys.exit(main())
