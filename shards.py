"""``pbrforge shards`` as a script, for torchrun: run the teacher once over a data set and write float16
distillation shards (``pbrforge.teacher.shards``).

Examples:
    python shards.py runs/teacher/checkpoints/best.pt --data data/demo --output shards/
    torchrun --nproc_per_node 2 shards.py best.pt --data data/demo --output shards/
    python shards.py --verify shards/
"""

from pbrforge.teacher.shards import main

if __name__ == "__main__":
    main()
