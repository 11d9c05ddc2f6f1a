"""Build ``tf2_msgs`` (``TFMessage`` only) into this Python environment from the rosidl wheels on PyPI.

``tf2_msgs`` is not on PyPI, but rclpy needs its generated type support to subscribe to ``/tf``. The ``ros``
extra ships the rosidl toolchain (ament_cmake, rosidl_default_generators); this script writes the interface
package (``TFMessage.msg`` = ``geometry_msgs/TransformStamped[] transforms``, the same definition and type
name as ROS, so it talks to any ROS 2 ``/tf``) to a temporary folder and runs CMake configure, build and install
into ``sys.prefix`` (the venv: its ``lib/`` is on the library path the ROS wheels set up). Needs cmake, a C/C++
compiler and Python headers. In a ROS 2 workspace the real ``tf2_msgs`` is used instead; do not run this there.

    python -m sana_wm_ros.build_tf2_msgs [--prefix PREFIX] [--force]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

PACKAGE_XML = """<?xml version="1.0"?>
<package format="3">
  <name>tf2_msgs</name>
  <version>0.43.0</version>
  <description>tf2_msgs/TFMessage built locally by sana_wm_ros (the PyPI ROS wheels lack tf2_msgs)</description>
  <maintainer email="noreply@example.com">sana-wm-env</maintainer>
  <license>BSD-3-Clause</license>
  <buildtool_depend>ament_cmake</buildtool_depend>
  <buildtool_depend>rosidl_default_generators</buildtool_depend>
  <depend>geometry_msgs</depend>
  <member_of_group>rosidl_interface_packages</member_of_group>
  <export><build_type>ament_cmake</build_type></export>
</package>
"""

CMAKELISTS = """cmake_minimum_required(VERSION 3.16)
project(tf2_msgs)
find_package(ament_cmake REQUIRED)
find_package(rosidl_default_generators REQUIRED)
find_package(geometry_msgs REQUIRED)
find_package(Python3 REQUIRED COMPONENTS Interpreter Development NumPy)
# The wheels' exported targets name the wheel builder's Python include dirs; point them at this Python.
foreach(dep geometry_msgs std_msgs builtin_interfaces)
  if(TARGET ${dep}::${dep}__rosidl_generator_py)
    set_target_properties(${dep}::${dep}__rosidl_generator_py PROPERTIES
      INTERFACE_INCLUDE_DIRECTORIES "${Python3_INCLUDE_DIRS};${Python3_NumPy_INCLUDE_DIRS}")
  endif()
endforeach()
rosidl_generate_interfaces(${PROJECT_NAME} "msg/TFMessage.msg" DEPENDENCIES geometry_msgs)
ament_package()
"""

TFMESSAGE_MSG = "geometry_msgs/TransformStamped[] transforms\n"


def available() -> bool:
    """True if ``tf2_msgs.msg.TFMessage`` imports in a fresh interpreter."""
    r = subprocess.run([sys.executable, "-c", "from tf2_msgs.msg import TFMessage"], capture_output=True)
    return r.returncode == 0


def build(prefix: str | Path | None = None, jobs: int = 2, verbose: bool = False) -> Path:
    """Generate, compile and install tf2_msgs into ``prefix`` (default ``sys.prefix``); returns the prefix."""
    prefix = Path(prefix or sys.prefix)
    if shutil.which("cmake") is None:
        raise RuntimeError("building tf2_msgs needs cmake (and a C/C++ compiler) on PATH")
    env = dict(os.environ)
    env["AMENT_PREFIX_PATH"] = os.pathsep.join(p for p in (sys.prefix, env.get("AMENT_PREFIX_PATH", "")) if p)
    env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
    with tempfile.TemporaryDirectory(prefix="tf2_msgs_") as tmp:
        src, bld = Path(tmp) / "tf2_msgs", Path(tmp) / "build"
        (src / "msg").mkdir(parents=True)
        (src / "package.xml").write_text(PACKAGE_XML)
        (src / "CMakeLists.txt").write_text(CMAKELISTS)
        (src / "msg" / "TFMessage.msg").write_text(TFMESSAGE_MSG)
        steps = [
            ["cmake", "-S", str(src), "-B", str(bld), f"-DCMAKE_PREFIX_PATH={sys.prefix}",
             f"-DCMAKE_INSTALL_PREFIX={prefix}", f"-DPython3_EXECUTABLE={sys.executable}",
             f"-DPython3_INCLUDE_DIR={sysconfig.get_paths()['include']}", "-DCMAKE_BUILD_TYPE=Release",
             "-DBUILD_TESTING=OFF"],
            ["cmake", "--build", str(bld), "-j", str(jobs)],
            ["cmake", "--install", str(bld)],
        ]
        for cmd in steps:
            r = subprocess.run(cmd, env=env, capture_output=not verbose, text=True)
            if r.returncode != 0:
                tail = "" if verbose else (r.stdout + r.stderr)[-4000:]
                raise RuntimeError(f"building tf2_msgs failed at `{' '.join(cmd[:3])} ...`:\n{tail}")
    return prefix


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sana_wm_ros.build_tf2_msgs", description=__doc__.split("\n")[0])
    ap.add_argument("--prefix", default=None, help="install prefix (default: this Python's sys.prefix)")
    ap.add_argument("--force", action="store_true", help="rebuild even if tf2_msgs already imports")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)
    if available() and not args.force:
        print("tf2_msgs is already importable; nothing to do (--force rebuilds)")
        return 0
    try:
        prefix = build(args.prefix, args.jobs, args.verbose)
    except RuntimeError as err:
        print(f"build_tf2_msgs: {err}", file=sys.stderr)
        return 1
    if args.prefix is None and not available():
        print("build_tf2_msgs: built and installed, but `from tf2_msgs.msg import TFMessage` still fails",
              file=sys.stderr)
        return 1
    print(f"tf2_msgs installed into {prefix}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
