"""`kerastrace.demo` moved to `kerastrace.apps.demo`; this name stays for existing code.

Importing it gives the very same module object (`kerastrace.demo is
kerastrace.apps.demo`), so every name, private ones included, and monkeypatching
work as before.
"""

import sys

from kerastrace.apps import demo as _module

sys.modules[__name__] = _module
