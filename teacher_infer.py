"""The old name of ``shards.py`` (``pbrforge shards``), kept for one release: it warns, then runs the same command.

The name said "teacher inference" while the script writes distillation shards, and ``pbrforge teacher-infer``
is another command (the teacher on one capture); ``shards.py`` and ``pbrforge shards`` now share one name.

Example:
    python shards.py runs/teacher/checkpoints/best.pt --data data/demo --output shards/
"""

from pbrforge.logs import ensure_logging
from pbrforge.teacher.shards import main

if __name__ == "__main__":
    ensure_logging().warning(
        "teacher_infer.py is deprecated, use shards.py (the old name goes in the next release)"
    )
    main()
