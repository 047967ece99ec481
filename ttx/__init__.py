"""ttx: test-time compute for language models.

`import ttx` registers ttx's model classes (In-Place TTT) with transformers' Auto factories, so a
checkpoint made by `ttx inplace-ttt-convert` loads with `AutoModelForCausalLM.from_pretrained`.
The registration waits until transformers is imported (it imports torch), so `import ttx` and
`ttx --help` stay light; `ttx.register()` does it at once.
"""

import sys

__version__ = "0.2.0"


def register() -> None:
    """Register ttx's model classes with transformers' Auto factories (idempotent)."""
    import ttx.inplace_ttt.modeling  # noqa: F401  (its import registers the classes)


class _AfterImport:
    """A one-shot meta-path finder: runs `callback` once `name` has been imported."""

    def __init__(self, name: str, callback):
        self.name, self.callback = name, callback

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        import importlib.util

        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _Then(spec.loader, self.callback)
        return spec


class _Then:
    """A loader that runs a callback after the module it wraps has executed."""

    def __init__(self, loader, callback):
        self.loader, self.callback = loader, callback

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        try:
            self.callback()
        except Exception as exc:  # noqa: BLE001 - never break the user's import of transformers
            import warnings

            warnings.warn(f"ttx could not register its model classes: {exc}", stacklevel=2)

    def __getattr__(self, name):
        return getattr(self.loader, name)


if "transformers" in sys.modules:
    register()
elif not any(isinstance(f, _AfterImport) for f in sys.meta_path):
    sys.meta_path.insert(0, _AfterImport("transformers", register))
