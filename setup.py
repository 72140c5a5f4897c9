"""Build script for fastload's optional C extensions; all metadata lives in pyproject.toml.

``fastload.ops._jpegcrop`` (partial JPEG decoding fused with the antialiased resize) needs libjpeg-turbo's headers and library
(Debian/Ubuntu: ``apt-get install libjpeg62-turbo-dev`` or ``libjpeg-turbo8-dev``). It is optional: when it
does not compile or link, the install goes on without it and fastload decodes whole JPEGs (simplejpeg / PIL).

``fastload.formats._sigbus`` (no dependencies) turns SIGBUS from a data file truncated while it is mapped
into a named FormatError; without it such a read kills the process, as it would any mmap reader.
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension("fastload.ops._jpegcrop", ["fastload/ops/_jpegcrop.c", "fastload/ops/_aaresize.c"],
                             depends=["fastload/ops/_aaresize.h"], libraries=["jpeg"],
                             extra_compile_args=["-O3"], optional=True),
                   Extension("fastload.formats._sigbus", ["fastload/formats/_sigbus.c"], optional=True)])
