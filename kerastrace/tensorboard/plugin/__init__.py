"""The kerastrace TensorBoard plugin (tab "KERASTRACE").

Installed with kerastrace and registered through the `tensorboard_plugins`
entry point, so `tensorboard --logdir <logdir>` shows it whenever the log
directory holds kerastrace records (see `kerastrace.tensorboard`'s
`write_*_data` writers and the monitors). Its frontend is a static bundle
of ES modules served by the plugin itself: no build step, no network.

Importing this package imports TensorBoard but neither TensorFlow nor Keras.
"""

from kerastrace.tensorboard.plugin._format import PLUGIN_NAME
from kerastrace.tensorboard.plugin._plugin import KerastracePlugin
from kerastrace.tensorboard.plugin._reader import Reader

__all__ = ["KerastracePlugin", "PLUGIN_NAME", "Reader"]
