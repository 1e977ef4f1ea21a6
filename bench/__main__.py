import os
import sys

if "--head" in sys.argv[1:] and "PBK_BENCH_HEAD" not in os.environ:
    from bench.snapshot import run_at_head  # before importing any project code: the tree may be mid-edit

    raise SystemExit(run_at_head(sys.argv[1:]))

from bench.run import main

raise SystemExit(main())
