"""The script `--nproc N` starts under paddle.distributed.launch: one process of the run, its settings
from a JSON file; rank 0 writes the summary (or the error) where the starting process reads it."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(settings: str) -> int:
    from mixcli.errors import MixError
    from mixcli.train.config import FinetuneConfig
    from mixcli.train.dist import world
    from mixcli.train.loop import train

    config = FinetuneConfig(**json.loads(Path(settings).read_text(encoding="utf-8")))
    report = Path(config.extra["report"])
    rank = world()[0]
    try:
        summary = train(config, log=lambda m: print(m, file=sys.stderr, flush=True))
    except MixError as e:
        if rank == 0:
            report.write_text(json.dumps({"error": e.problem, "fix": e.fix}), encoding="utf-8")
        return 1
    if rank == 0:
        report.write_text(json.dumps({"summary": summary}), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
