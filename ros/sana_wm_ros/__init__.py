"""ROS 2 bridge of sana-wm-env: the ``sana_wm`` node (``sana_wm_ros.node``) turns a robot's pose stream into
world-model camera images. Importing this package does not import rclpy; ``sana_wm_ros.node`` does."""
