"""Run the teacher once over a data set and write float16 distillation shards (``pbrforge.teacher.shards``).

Examples:
    python teacher_infer.py --checkpoint runs/teacher/checkpoints/best.pt --data-root data/demo --shards-dir shards/
    torchrun --nproc_per_node 2 teacher_infer.py --checkpoint best.pt --data-root data/demo --shards-dir shards/
    python teacher_infer.py --verify shards/
"""

from pbrforge.teacher.shards import main

if __name__ == "__main__":
    main()
