"""Project plumbing: which library messages `import helpers` hides (only named ones) and where outputs go."""

import subprocess
import sys

from conftest import ROOT

SHOW_WARNINGS = """
import logging, warnings
import helpers
warnings.warn("peft: a warning a learner should see", UserWarning)
warnings.warn("a FutureWarning a learner should see", FutureWarning)
warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning)
logging.getLogger("transformers.modeling_utils").warning("transformers: a logged warning a learner should see")
logging.getLogger("bitsandbytes.backends.cpu.ops").warning("Failed to load CPU gemm_4bit_forward from kernels-community: x")
logging.getLogger("bitsandbytes.backends.cpu.ops").warning("bitsandbytes: another warning")
"""


def test_import_helpers_hides_only_the_named_messages():
    result = subprocess.run([sys.executable, "-W", "default", "-c", SHOW_WARNINGS], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    for visible in ("peft: a warning", "a FutureWarning a learner", "transformers: a logged warning",
                    "bitsandbytes: another warning"):
        assert visible in result.stderr, (visible, result.stderr[-2000:])
    assert "is_gradient_checkpointing" not in result.stderr and "gemm_4bit_forward" not in result.stderr
