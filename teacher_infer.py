"""The teacher_infer stage as a script, for torchrun: run the teacher once over a data set and write float16
distillation shards. It is ``pbrforge shards`` (``pbrforge.teacher.shards``): one command, two spellings.
``pbrforge teacher-infer`` is another command, the teacher on one capture (``teacher/infer.py``).

Examples:
    python teacher_infer.py runs/teacher/checkpoints/best.pt --data data/demo --output shards/
    torchrun --nproc_per_node 2 teacher_infer.py best.pt --data data/demo --output shards/
    python teacher_infer.py --verify shards/
"""

from pbrforge.teacher.shards import main

if __name__ == "__main__":
    main()
