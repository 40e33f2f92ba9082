"""A researcher's backend living outside fedsilo: proves the entry-point registry works."""
from fedsilo.crypto.plain import PlainBackend


class PluginPlainBackend(PlainBackend):
    name = "plugin_plain"
