"""examples/train_cogformer.py for a few steps: dipole's and eager torch's losses agree and
the plot is written."""

import importlib.util
import os

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "train_cogformer.py")


def test_train_cogformer_few_steps(ctx, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("train_cogformer", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    png = tmp_path / "loss.png"
    # Smaller than the example's defaults; same kernels (head dim 16, causal, both variants).
    rc = mod.main(["--steps", "4", "--batch", "4", "--context", "32", "--tol", "1e-4",
                   "--plot", str(png)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "largest |loss difference|" in out and "dipole" in out and "eager torch" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
