"""mkdocs hook: show Sphinx cross-reference roles in docstrings (:class:`X`, :func:`f`, ...) as plain code.

mkdocstrings renders docstrings as Markdown, where a role's name would stay in the text (":class:X").
"""
import re

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|mod|data|obj|exc):(?=<code>)")


def on_page_content(html, **kwargs):
    return _ROLE.sub("", html)
