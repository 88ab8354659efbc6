"""`kerastrace.explain` moved to `kerastrace.apps.explain`; this name stays for existing code.

Importing it gives the very same module object (`kerastrace.explain is
kerastrace.apps.explain`), so every name, private ones included, and monkeypatching
work as before.
"""

import sys

from kerastrace.apps import explain as _module

sys.modules[__name__] = _module
