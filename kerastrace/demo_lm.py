"""`kerastrace.demo_lm` moved to `kerastrace.apps.demo_lm`; this name stays for existing code.

Importing it gives the very same module object (`kerastrace.demo_lm is
kerastrace.apps.demo_lm`), so every name, private ones included, and monkeypatching
work as before.
"""

import sys

from kerastrace.apps import demo_lm as _module

sys.modules[__name__] = _module
