"""rubytailor: local, private AI code completion for Ruby.

The thin core lives here (CLI, configuration, paths, the Prism bridge); the
serving, model, training and personalization code are the subpackages
``rubytailor.lsp``, ``rubytailor.model``, ``rubytailor.training`` and
``rubytailor.personalization``.
"""

__version__ = "0.1.0"
