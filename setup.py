"""Build script for fastload's optional C extensions; all metadata lives in pyproject.toml.

``fastload.ops._jpegcrop`` (partial JPEG decoding fused with the antialiased resize) needs libjpeg-turbo's headers and library
(Debian/Ubuntu: ``apt-get install libjpeg62-turbo-dev`` or ``libjpeg-turbo8-dev``). It is optional: when it
does not compile or link, the install goes on without it, says so, and fastload decodes whole JPEGs
(simplejpeg / PIL).

``fastload.formats._sigbus`` (any C compiler, no libraries) turns SIGBUS from a data file truncated while it is
mapped into a named FormatError; without it such a read kills the process, as it would any mmap reader.
"""
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# What each optional extension's absence means, and how to get it; printed when it cannot be built.
WITHOUT = {
    "fastload.ops._jpegcrop": """fastload works without it: it then decodes whole JPEGs, at about twice the CPU time per random-resized crop.
To build it, install libjpeg-turbo's headers and reinstall fastload:
    Debian/Ubuntu: apt-get install libjpeg62-turbo-dev   (or libjpeg-turbo8-dev)
    Fedora/RHEL:   dnf install libjpeg-turbo-devel
    macOS:         brew install jpeg-turbo   (then CFLAGS=-I$(brew --prefix)/include LDFLAGS=-L$(brew --prefix)/lib)
`fastload profile` reports whether the native path is in use.""",
    "fastload.formats._sigbus": """fastload works without it: a data file cut while a loader reads it then kills the process (SIGBUS)
instead of raising a FormatError that names the file. Any C compiler builds it (Debian/Ubuntu: apt-get install gcc).""",
}


class OptionalBuildExt(build_ext):
    """Build each extension if the compiler and its libraries are there; otherwise explain and carry on."""

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as e:  # CompileError, LinkError, a missing compiler: all mean "no extension"
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            print(f"\nfastload: the optional C extension {ext.name} was NOT built ({first}).\n"
                  f"{WITHOUT.get(ext.name, 'fastload works without it.')}\n", file=sys.stderr)


setup(ext_modules=[Extension("fastload.ops._jpegcrop", ["fastload/ops/_jpegcrop.c", "fastload/ops/_aaresize.c"],
                             depends=["fastload/ops/_aaresize.h"], libraries=["jpeg"],
                             extra_compile_args=["-O3"], optional=True),
                   Extension("fastload.formats._sigbus", ["fastload/formats/_sigbus.c"], optional=True)],
      cmdclass={"build_ext": OptionalBuildExt})
