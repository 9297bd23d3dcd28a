import sys

from asr_kd.bin.cli import main

sys.exit(main())
