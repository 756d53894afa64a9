"""MkDocs hooks for fnn's manual.

The docstrings cross-reference in the Sphinx way (``:func:`fnn.fit```), which Markdown
renders as the role's name glued to inline code. This drops the role and keeps the code.
"""

import re

_ROLE = re.compile(r":(?:func|class|mod|meth|attr|data|exc|obj):(<code>)~?")


def on_page_content(html, page, config, files):
    return _ROLE.sub(r"\1", html)
