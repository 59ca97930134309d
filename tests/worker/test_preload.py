"""The worker's parent preloads the training stack before forking job processes: with CUDA it must not
initialise it (or import anything that does, like bitsandbytes), or no forked job could use the GPU.
Importing the task modules loads no training code (worker/training/__init__.py imports on first use)."""

import os
import subprocess
import sys


def preloaded(cuda_build: bool) -> list[str]:
    """What the worker's parent holds after its preload (and after importing its task modules)."""
    code = (
        "import sys\n"
        "import torch\n"
        # A CUDA build of torch cannot be installed here: its version string stands in for one (a fake).
        f"torch.version.cuda = {'12.4' if cuda_build else None!r}\n"
        "from worker.lifecycle import preload_training\n"
        "import worker.tasks, worker.eval_tasks\n"
        "preload_training()\n"
        "assert 'transformers' in sys.modules and 'torch' in sys.modules\n"
        "print('bitsandbytes' in sys.modules, 'peft' in sys.modules, 'worker.training.loop' in sys.modules,"
        " torch.cuda.is_initialized())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_with_cuda_the_workers_parent_leaves_bitsandbytes_and_cuda_alone():
    assert preloaded(cuda_build=True) == ["False", "False", "False", "False"]


def test_on_a_cpu_only_torch_the_workers_parent_preloads_the_training_loop_too():
    assert preloaded(cuda_build=False) == ["True", "True", "True", "False"]


def test_the_workers_preload_imports_the_database_driver_and_opens_nothing(postgres_url):
    code = (
        "import sys\n"
        "from worker.lifecycle import preload_database_driver\n"
        "assert 'psycopg' not in sys.modules\n"
        "preload_database_driver()\n"
        "from app.core.db import engine_for\n"
        "print('psycopg' in sys.modules, 'sqlalchemy.dialects.postgresql.psycopg' in sys.modules,"
        " engine_for.cache_info().currsize)\n"
    )
    env = {**os.environ, "WHETSTONE_DATABASE_URL": postgres_url}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True", "0"], result.stdout
