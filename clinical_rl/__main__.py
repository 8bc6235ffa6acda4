"""`python -m clinical_rl <command> ...`: the same CLI as `clinical-rl`, for a `ray job submit` entrypoint.

`python -m` finds the package through the interpreter on PATH (and, with a `working_dir`, in the job's working
directory) where the `clinical-rl` script needs the environment's `bin/` on the PATH of the node that runs it.
"""

import sys

from clinical_rl.cli import main

if __name__ == "__main__":  # vLLM's spawned processes re-import the main module
    sys.exit(main())
