"""The built-in tasks (``[federation] task``), each one module that registers itself with
:func:`fedsilo.silos.runner.register_task`: ``horizontal``, ``statistics``, ``vertical``."""
