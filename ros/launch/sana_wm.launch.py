"""Launch the sana_wm node with config/params.yaml (override any parameter: ros2 launch ... model:=PATH)."""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def generate_launch_description():
    params = os.path.join(get_package_share_directory("sana_wm_ros"), "config", "params.yaml")
    args = {
        "model": "default", "input": "odometry", "pose_topic": "/odom", "initial_image": "",
        "first_frame_topic": "", "frame_id": "sana_wm_camera_optical_frame",
    }
    return LaunchDescription(
        [DeclareLaunchArgument(k, default_value=v) for k, v in args.items()]
        + [DeclareLaunchArgument("params_file", default_value=params)]
        + [
            Node(
                package="sana_wm_ros",
                executable="sana_wm_node",
                name="sana_wm",
                output="screen",
                emulate_tty=True,
                parameters=[LaunchConfiguration("params_file"), {k: LaunchConfiguration(k) for k in args}],
            )
        ]
    )
