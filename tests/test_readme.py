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
