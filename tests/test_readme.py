"""The README's library example runs as written."""

import re
from pathlib import Path

README = Path(__file__).parents[1] / "README.md"


def test_the_library_example_runs():
    text = README.read_text()
    section = text[text.index("## The library"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md (library example)", "exec"), namespace)
    assert namespace["history"]["loss"][-1] < namespace["history"]["loss"][0]  # gradient_descent
    assert namespace["metrics"]["loss"] > 0


def test_the_script_and_sweep_examples_run(tmp_path, monkeypatch):
    # The one-run script and the sweep as written, at toy sizes (epochs, widths) for speed.
    text = README.read_text()
    section = text[text.index("## The library"):text.index("## More from the backward pass")]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)[1:3]
    code = "\n".join(blocks)
    for big, small in (("200", "3"), ("512", "16"), ("epochs=50", "epochs=2"), ("early_stopping=20", "early_stopping=2")):
        code = code.replace(big, small)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md (script and sweep examples)", "exec"), namespace)
    assert (tmp_path / "run.npz").exists() and "lr" in namespace["history"]
    assert namespace["result"].history["test_loss"].shape == (30, 2)
    assert namespace["result"].best is not None
