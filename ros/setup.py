"""colcon / ament_python build of the sana_wm_ros package (pip users install it with the main distribution)."""

from glob import glob

from setuptools import setup

PACKAGE = "sana_wm_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=[PACKAGE],
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="sana-wm-env maintainers",
    maintainer_email="maintainers@sana-wm-env.invalid",
    description="ROS 2 node: robot pose stream in, SANA-WM world-model camera images out",
    license="Apache-2.0",
    entry_points={"console_scripts": ["sana_wm_node = sana_wm_ros.node:main"]},
)
