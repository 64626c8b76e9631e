"""`python -m cnncc` is the `cnncc` command."""
import sys

from .cli import main

sys.exit(main())
