"""Python packages for the engine: install them into Blender's Python (a background job), check again."""

import bpy
from bpy.props import StringProperty

from .. import dependencies, preferences
from ..runner import JobOperator, _fail_poll


class FACEFORGE_OT_install_dependencies(JobOperator, bpy.types.Operator):
    bl_idname = "faceforge.install_dependencies"
    bl_label = "Install Dependencies"
    bl_description = ("Download and install the missing Python packages (torch, mediapipe, opencv, ...) with pip "
                      "into a FaceForge folder of your Blender user directory. Needs internet; torch is large")
    bl_options = {"REGISTER"}
    changes_scene = False

    # for scripts and tests: explicit package specs, extra pip arguments, another folder
    packages: StringProperty(name="Packages", default="", options={"HIDDEN", "SKIP_SAVE"})
    pip_args: StringProperty(name="Extra pip Arguments", default="", options={"HIDDEN", "SKIP_SAVE"})
    target: StringProperty(name="Folder", default="", subtype="DIR_PATH", options={"HIDDEN", "SKIP_SAVE"})

    def specs(self, context) -> list:
        if self.packages:
            return self.packages.split()
        prefs = preferences.get_prefs(context)
        wanted = dependencies.REQUIRED + (dependencies.OPTIONAL if prefs is not None and prefs.install_optional else ())
        return [r.pip for r in dependencies.missing(wanted)]

    @classmethod
    def job_poll(cls, context):
        prefs = preferences.get_prefs(context)
        wanted = dependencies.REQUIRED + (dependencies.OPTIONAL if prefs is not None and prefs.install_optional else ())
        if not dependencies.missing(wanted):
            return _fail_poll(cls, "All packages FaceForge needs are installed")
        return True

    def prepare(self, context):
        from pathlib import Path
        specs = self.specs(context)
        target = Path(bpy.path.abspath(self.target)) if self.target else dependencies.deps_dir()
        extra = self.pip_args.split()
        self._specs = specs

        def work(progress):   # worker thread: a pip subprocess
            return dependencies.install(specs, target, progress, extra_args=extra)

        return work

    def finish(self, context, log):
        still = dependencies.missing()
        if still:
            return (f"Installed {' '.join(self._specs)}; still missing: {', '.join(r.module for r in still)} "
                    "(restart Blender and check again)")
        return f"Installed {' '.join(self._specs)}: FaceForge is ready"


class FACEFORGE_OT_check_dependencies(bpy.types.Operator):
    bl_idname = "faceforge.check_dependencies"
    bl_label = "Check Again"
    bl_description = "Look again for the Python packages FaceForge needs (after installing them yourself)"
    bl_options = {"REGISTER", "INTERNAL"}

    def execute(self, context):
        dependencies.refresh()
        dependencies.add_deps_to_path()
        msg = dependencies.missing_message()
        self.report({"WARNING"} if msg else {"INFO"}, msg or "All required packages are installed")
        return {"FINISHED"}


CLASSES = (FACEFORGE_OT_install_dependencies, FACEFORGE_OT_check_dependencies)
