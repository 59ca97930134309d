"""The worker's parent preloads the training stack before forking job processes: it must not
initialise CUDA (or import anything that does, like bitsandbytes), or no forked job could use the GPU."""

import os
import subprocess
import sys


def test_the_workers_preload_leaves_cuda_and_bitsandbytes_alone():
    code = (
        "import sys\n"
        "from worker.lifecycle import preload_training\n"
        "preload_training()\n"
        "import torch\n"
        "assert 'transformers' in sys.modules and 'torch' in sys.modules\n"
        "print('bitsandbytes' in sys.modules, 'peft' in sys.modules, torch.cuda.is_initialized())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False", "False"], result.stdout


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
