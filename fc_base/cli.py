"""What every fc-sae command line shares: errors end as one line on stderr and a non-zero exit."""
from __future__ import annotations

import os
import sys


def run_command(prog: str, args) -> int:
    """Call ``args.func(args)``; any exception becomes ``<prog>: error: <first line>`` and exit 1
    (``FC_SAE_DEBUG=1`` re-raises it with its traceback)."""
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("FC_SAE_DEBUG") == "1":
            raise
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"{prog}: error: {msg}", file=sys.stderr)
        return 1
