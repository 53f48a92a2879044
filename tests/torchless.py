"""Run code in a child process where `import torch` fails, as on an edge box without PyTorch."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# a meta-path finder, not sys.modules['torch'] = None: scipy's array API helpers read sys.modules and
# would trip over a None entry, while a real missing package raises ModuleNotFoundError on import
PRELUDE = """
import importlib, json, sys

class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'torchvision'):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None

sys.meta_path.insert(0, NotInstalled())
"""
EPILOGUE = """
print(json.dumps({'rc': rc, 'torch': [m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision')]}))
"""


def run_without_torch(body: str, timeout: float = 120) -> dict:
    """Run `body` (Python that sets `rc`) without PyTorch; returns {'rc': rc, 'torch': modules of
    torch that got imported anyway}. Fails the test when the child itself fails."""
    proc = subprocess.run([sys.executable, "-c", PRELUDE + body + EPILOGUE], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])
