"""Build hooks that pyproject.toml cannot express: ship ``hf_factor_embed-autoload.pth`` into site-packages.

A .pth file must sit at the top of site-packages, which neither package data nor data files reach. Regular
wheels get it through ``build_py`` (copied to the top of the build tree); editable installs (``pip install -e``)
build no tree, so their wheel gets it written beside setuptools' own editable .pth.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

PTH = "hf_factor_embed-autoload.pth"
PTH_TEXT = (Path(__file__).parent / PTH).read_text()


class BuildPyWithPth(build_py):
    def run(self) -> None:
        super().run()
        target = Path(self.build_lib, PTH)
        target.write_text(PTH_TEXT)
        self.outfiles = [*getattr(self, "outfiles", []), str(target)]

    def get_outputs(self, include_bytecode=True):
        return [*super().get_outputs(include_bytecode), str(Path(self.build_lib, PTH))]


class EditableWheelWithPth(editable_wheel):
    def _select_strategy(self, name, tag, build_lib):
        strategy = super()._select_strategy(name, tag, build_lib)
        original_call = strategy.__call__

        class WithPth(type(strategy)):
            def __call__(self, wheel, files, mapping):
                original_call(wheel, files, mapping)
                wheel.writestr(PTH, PTH_TEXT)

        strategy.__class__ = WithPth
        return strategy


setup(cmdclass={"build_py": BuildPyWithPth, "editable_wheel": EditableWheelWithPth})
